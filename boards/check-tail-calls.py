#!/usr/bin/env python3
"""Checks that every wasmi op handler in a binary ends in a jump to the next
op's handler, not a call.

Why: wasmi's tail-call dispatcher (`auto-dispatch`, see the top-level
Cargo.toml) runs each Wasm op in its own function, which ends by jumping to
the next op's handler. Where LLVM emits a call there instead (a value with
drop glue or a borrowed local still live at the dispatch, a path through a
non-inlined helper), every run of that op leaves a frame on the native stack,
and a guest that loops over it overflows the stack and aborts the gateway.

A handler is at fault when it calls another function indirectly and then
only tears down its frame and returns that function's result (directly, or
through unconditional jumps to a shared epilogue): a tail call LLVM did not
turn into a jump. Indirect calls whose result the handler goes
on to use (the store's `grow_memory` and `grow_table`, host functions) are
not dispatches and are fine.

  check-tail-calls.py BINARY [--objdump OBJDUMP]

BINARY must have its symbols (not stripped): a test binary, or a release
build made with `cargo rustc --release -p wasmgate --bin wasmgate -- -C
strip=none`. Knows x86_64 and aarch64 code. Prints the handlers at fault and
exits 1 if there are any, 2 if it finds no handler at all (a stripped binary,
or the portable dispatcher, which has no per-op functions to check).

Stdlib only.
"""

import argparse
import re
import subprocess
import sys

HANDLER_PREFIX = "wasmi::engine::executor::handler::exec::"
FUNCTION = re.compile(r"^[0-9a-f]+ <(.*)>:$")
INSTRUCTION = re.compile(r"^\s*[0-9a-f]+:\s+(\S+)\s*(.*)$")

# Instructions that may sit between a call and the return that hands its
# result back: restoring the stack pointer and callee-saved registers.
# Register-to-register moves too: the result is often moved out and back.
X86_EPILOGUE = re.compile(
    r"^(add|lea|mov)\w*\s+.*%rsp$|^pop\w*\s|^nop|^xchg\s+%ax,%ax|^mov\w*\s+%\w+,%\w+$")
A64_EPILOGUE = re.compile(
    r"^(ldp|ldr|add|mov)\s+.*\bsp\b|^ldp\s+x29, x30|^nop|^autiasp|^hint|^mov\s+[wx]\d+, [wx]\d+$")


def is_indirect_call(mnemonic, operands):
    if mnemonic.startswith("call"):
        # `call *x(%rip)` is a call to a named function through the GOT; a
        # dispatch calls through a register, or memory a register points at.
        return operands.startswith("*") and "(%rip)" not in operands
    return mnemonic in ("blr", "blraa", "blrab", "blraaz", "blrabz")


def is_return(mnemonic):
    return mnemonic.startswith("ret")


def is_epilogue(mnemonic, operands):
    text = f"{mnemonic} {operands}".strip()
    return bool(X86_EPILOGUE.search(text) or A64_EPILOGUE.search(text))


def functions(disassembly):
    """(demangled name, [(address, mnemonic, operands)]) of each function in
    objdump -d -C output."""
    name, body = None, []
    for line in disassembly.splitlines():
        header = FUNCTION.match(line)
        if header:
            if name is not None:
                yield name, body
            name, body = header.group(1), []
            continue
        instruction = INSTRUCTION.match(line)
        if instruction and name is not None:
            address = int(line.split(":")[0], 16)
            body.append((address, instruction.group(1), instruction.group(2).split("#")[0].strip()))
    if name is not None:
        yield name, body


# An unconditional direct jump, and where to (x86 `jmp 1234 <f+0x10>`, aarch64 `b 1234 <f+0x10>`).
DIRECT_JUMP = re.compile(r"^([0-9a-f]+)(\s+<.*>)?$")


def jump_target(mnemonic, operands):
    if mnemonic in ("jmp", "jmpq", "b"):
        target = DIRECT_JUMP.match(operands)
        if target:
            return int(target.group(1), 16)
    return None


def returns_as_it_is(body, start):
    """Whether the code from BODY[START] on only tears the frame down and
    returns, following unconditional jumps (LLVM often shares one epilogue)."""
    index = {address: i for i, (address, _, _) in enumerate(body)}
    i, steps = start, 0
    while i < len(body) and steps < 64:
        _, mnemonic, operands = body[i]
        steps += 1
        if is_return(mnemonic):
            return True
        target = jump_target(mnemonic, operands)
        if target is not None:
            if target not in index:
                return False
            i = index[target]
            continue
        if not is_epilogue(mnemonic, operands):
            return False
        i += 1
    return False


def tail_calls_not_jumps(body):
    """Indices of the indirect calls in BODY whose result is returned as it is."""
    return [
        i for i, (_, mnemonic, operands) in enumerate(body)
        if is_indirect_call(mnemonic, operands) and returns_as_it_is(body, i + 1)
    ]


def handler_name(symbol):
    """The op name of a handler symbol, or None for anything else."""
    if not symbol.startswith(HANDLER_PREFIX):
        return None
    rest = symbol[len(HANDLER_PREFIX):]
    # exec::simd:: handlers are handlers too; drop the hash and LTO suffixes.
    name = re.sub(r"(::h[0-9a-f]{16})?(\.llvm\.\d+|\.\d+)?$", "", rest)
    # vendor/wasmi's out-of-line helpers beside the handlers are not handlers.
    return None if name.endswith("_outlined") else name


def check(disassembly):
    """(handlers seen, {handler: number of calls that should have been jumps})."""
    seen, faults = set(), {}
    for symbol, body in functions(disassembly):
        name = handler_name(symbol)
        if name is None:
            continue
        seen.add(name)
        found = tail_calls_not_jumps(body)
        if found:
            faults[name] = faults.get(name, 0) + len(found)
    return seen, faults


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary")
    parser.add_argument("--objdump", default="objdump")
    args = parser.parse_args(argv)
    disassembly = subprocess.run(
        [args.objdump, "-d", "-C", "--no-show-raw-insn", args.binary],
        check=True, capture_output=True, text=True,
    ).stdout
    seen, faults = check(disassembly)
    if not seen:
        print(f"check-tail-calls: no wasmi op handler in {args.binary} "
              "(stripped, or built with the portable dispatcher)", file=sys.stderr)
        return 2
    for name in sorted(faults):
        print(f"calls instead of jumping to the next op: {name} ({faults[name]}x)")
    print(f"check-tail-calls: {len(seen)} handlers, {len(faults)} with a call where a jump belongs",
          file=sys.stderr)
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
