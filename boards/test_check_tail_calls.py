"""Tests of boards/check-tail-calls.py: python3 -m unittest discover -s boards"""

import importlib.util
import os
import unittest

spec = importlib.util.spec_from_file_location(
    "check_tail_calls", os.path.join(os.path.dirname(__file__), "check-tail-calls.py"))
ctc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ctc)

# Shaped like `objdump -d -C --no-show-raw-insn` output.
X86 = """
0000000000001000 <wasmi::engine::executor::handler::exec::i32_add_rrs>:
    1000:	mov    (%rsi),%rax
    1003:	add    $0x10,%rsi
    1007:	jmp    *%rax

0000000000001010 <wasmi::engine::executor::handler::exec::memory_grow>:
    1010:	push   %rbx
    1011:	sub    $0x70,%rsp
    1015:	lea    0x20(%rsp),%rdi
    101a:	call   *0x678(%rbx)
    1020:	cmpl   $0x2,0x20(%rsp)
    1025:	call   *(%r14)
    1028:	add    $0x70,%rsp
    102c:	pop    %rbx
    102d:	ret

0000000000001030 <wasmi::engine::executor::handler::exec::call_imported>:
    1030:	push   %rbx
    1031:	call   *0x670(%rbx)
    1037:	test   %al,%al
    1039:	pop    %rbx
    103a:	ret

0000000000001050 <wasmi::engine::executor::handler::exec::call_indirect_r>:
    1050:	push   %rbx
    1051:	call   *(%rsi)
    1053:	jmp    1058 <wasmi::engine::executor::handler::exec::call_indirect_r+0x8>
    1055:	mov    $0x4,%al
    1057:	nop
    1058:	pop    %rbx
    1059:	ret

0000000000001040 <wasmgate::runtime::Function::run>:
    1040:	call   *%rax
    1042:	ret
"""

A64 = """
0000000000002000 <wasmi::engine::executor::handler::exec::table_grow>:
    2000:	stp	x29, x30, [sp, #-16]!
    2004:	blr	x8
    2008:	ldp	x29, x30, [sp], #16
    200c:	ret

0000000000002010 <wasmi::engine::executor::handler::exec::i64_add_rrs>:
    2010:	ldr	x8, [x1]
    2014:	br	x8
"""


class Check(unittest.TestCase):
    def test_a_handler_that_returns_what_it_called_is_at_fault(self):
        seen, faults = ctc.check(X86)
        self.assertEqual(faults["memory_grow"], 1)

    def test_a_jump_to_a_shared_epilogue_is_followed(self):
        seen, faults = ctc.check(X86)
        self.assertEqual(faults, {"memory_grow": 1, "call_indirect_r": 1})

    def test_handlers_that_jump_or_use_what_they_called_are_fine(self):
        seen, faults = ctc.check(X86)
        self.assertEqual(seen, {"i32_add_rrs", "memory_grow", "call_imported", "call_indirect_r"})
        self.assertNotIn("call_imported", faults)

    def test_functions_other_than_handlers_are_not_checked(self):
        seen, _ = ctc.check(X86)
        self.assertFalse(any("Function::run" in name for name in seen))

    def test_aarch64_calls_and_jumps_are_told_apart(self):
        seen, faults = ctc.check(A64)
        self.assertEqual(seen, {"table_grow", "i64_add_rrs"})
        self.assertEqual(faults, {"table_grow": 1})

    def test_hash_and_lto_suffixes_are_taken_off_handler_names(self):
        self.assertEqual(
            ctc.handler_name("wasmi::engine::executor::handler::exec::memory_grow.llvm.123"),
            "memory_grow")
        self.assertEqual(
            ctc.handler_name("wasmi::engine::executor::handler::exec::memory_grow::h0123456789abcdef"),
            "memory_grow")
        self.assertIsNone(ctc.handler_name("wasmi::engine::executor::handler::utils::x"))


if __name__ == "__main__":
    unittest.main()
