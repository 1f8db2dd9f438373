//! `fuel-regions [--blocks-only] IN.wasm OUT.wasm`: rewrites a module so that wasmi's fuel
//! metering bills the code after a `block`'s `end` only when that code runs.
//!
//! Why: wasmi 2.0 charges fuel per *region*, up front, with one
//! `ConsumeFuel` at the head of each function body, `loop` and `if` arm. A
//! `block` is not a region of its own, and neither is the code after its
//! `end`: that code is billed to the enclosing region when the region is
//! entered, even when a branch jumps over it. A C `switch` becomes nested
//! `block`s and a `br_table`, each case's code after the `end` of one of
//! them, so a bytecode interpreter's dispatch loop (QuickJS's
//! `JS_CallInternal`, ~50 KB of Wasm) is billed for every case's code on
//! every dispatch: an empty JavaScript `for` loop costs ~160,000 fuel an
//! iteration, though it runs in ~0.4 µs.
//!
//! The rewrite: after the `end` of a `block` (and of a `loop` or `if`, and
//! after a `br_if`) where the enclosing frame has nothing of its own on the
//! operand stack, the rest of that frame (up to its `end` or `else`) is
//! wrapped in a `loop` that nothing branches back to. A loop without a back edge is the same control flow as
//! no loop at all, but to wasmi it is a region: its code is billed when it
//! is entered. Branch depths that cross an inserted loop are raised by one.
//! Nothing else changes (other sections are copied byte for byte); the
//! output is validated.
use std::{env, fs, process::ExitCode};

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, CodeSection, Function, Instruction, Module, RawSection};
use wasmparser::{
    FuncValidator, FunctionBody, Operator, Parser, Payload, ValidPayload, Validator,
    ValidatorResources, WasmFeatures, WasmModuleResources,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Clone, Copy, PartialEq)]
enum Frame {
    /// A frame of the input; `true` for a `block`.
    Original { block: bool },
    /// A `loop` this tool inserted.
    Wrap,
}

#[derive(Default)]
struct Stats {
    functions: usize,
    wraps: usize,
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().collect();
    let (all, files) = match args.get(1).map(String::as_str) {
        Some("--blocks-only") => (false, &args[2..]),
        _ => (true, &args[1..]),
    };
    let [input, output] = files else {
        eprintln!("usage: fuel-regions [--blocks-only] IN.wasm OUT.wasm");
        return ExitCode::from(2);
    };
    match run(input, output, all) {
        Ok(stats) => {
            eprintln!(
                "fuel-regions: {} functions, {} loops inserted -> {output}",
                stats.functions, stats.wraps
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fuel-regions: {input}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `all` (the default; `--blocks-only` turns it off): also after the `end`
/// of a `loop` or `if` and after a `br_if`, whose following code a branch
/// can skip as well (measured in the README: a quarter less fuel again).
fn run(input: &str, output: &str, all: bool) -> Result<Stats> {
    let bytes = fs::read(input)?;
    let mut validator = Validator::new_with_features(WasmFeatures::default());
    let mut module = Module::new();
    let mut code: Option<(CodeSection, u32)> = None;
    let mut stats = Stats::default();
    for payload in Parser::new(0).parse_all(&bytes) {
        let payload = payload?;
        let valid = validator.payload(&payload)?;
        match &payload {
            Payload::CodeSectionStart { count, .. } => {
                code = Some((CodeSection::new(), *count));
            }
            Payload::CodeSectionEntry(body) => {
                let ValidPayload::Func(func, _) = valid else {
                    return Err("a function body the validator did not hand out".into());
                };
                let mut func = func.into_validator(Default::default());
                let rewritten = rewrite(body, &mut func, &mut stats, all)?;
                let (section, left) = code.as_mut().ok_or("code before its section")?;
                section.function(&rewritten);
                *left -= 1;
            }
            Payload::Version { .. } | Payload::End(_) => {}
            other => {
                if let Some((id, range)) = other.as_section() {
                    module.section(&RawSection {
                        id,
                        data: &bytes[usize::try_from(range.start)?..usize::try_from(range.end)?],
                    });
                }
            }
        }
        if matches!(code, Some((_, 0))) {
            let (section, _) = code.take().expect("matched");
            module.section(&section);
        }
    }
    let out = module.finish();
    Validator::new_with_features(WasmFeatures::default()).validate_all(&out)?;
    fs::write(output, out)?;
    Ok(stats)
}

/// The relative depth `depth` of the input, counted over the output's frames.
fn remap(frames: &[Frame], depth: u32) -> Result<u32> {
    let mut seen = 0;
    for (i, frame) in frames.iter().rev().enumerate() {
        if let Frame::Original { .. } = frame {
            if seen == depth {
                return Ok(u32::try_from(i)?);
            }
            seen += 1;
        }
    }
    Err(format!("branch depth {depth} outside the function").into())
}

/// The type of a wrapping loop: no parameters, the enclosing frame's results.
fn wrap_type(
    func: &FuncValidator<ValidatorResources>,
    block_type: wasmparser::BlockType,
) -> Option<BlockType> {
    match block_type {
        wasmparser::BlockType::Empty => Some(BlockType::Empty),
        wasmparser::BlockType::Type(ty) => {
            RoundtripReencoder.val_type(ty).ok().map(BlockType::Result)
        }
        wasmparser::BlockType::FuncType(index) => {
            let ty = func.resources().sub_type_at(index)?.unwrap_func();
            match ty.results() {
                [] => Some(BlockType::Empty),
                [one] => RoundtripReencoder
                    .val_type(*one)
                    .ok()
                    .map(BlockType::Result),
                _ => None,
            }
        }
    }
}

fn rewrite(
    body: &FunctionBody<'_>,
    func: &mut FuncValidator<ValidatorResources>,
    stats: &mut Stats,
    all: bool,
) -> Result<Function> {
    stats.functions += 1;
    let mut locals = Vec::new();
    let mut reader = body.get_locals_reader()?;
    for _ in 0..reader.get_count() {
        let offset = reader.original_position();
        let (count, ty) = reader.read()?;
        func.define_locals(offset, count, ty)?;
        locals.push((count, RoundtripReencoder.val_type(ty)?));
    }
    let mut out = Function::new(locals);
    // The function body's own frame is at the bottom.
    let mut frames = vec![Frame::Original { block: false }];
    let mut ops = body.get_operators_reader()?;
    while !ops.eof() {
        let (op, offset) = ops.read_with_offset()?;
        if matches!(op, Operator::End | Operator::Else) {
            while frames.last() == Some(&Frame::Wrap) {
                out.instruction(&Instruction::End);
                frames.pop();
            }
        }
        let instruction = match &op {
            Operator::Br { relative_depth } => Instruction::Br(remap(&frames, *relative_depth)?),
            Operator::BrIf { relative_depth } => {
                Instruction::BrIf(remap(&frames, *relative_depth)?)
            }
            Operator::BrTable { targets } => {
                let mut list = Vec::new();
                for target in targets.targets() {
                    list.push(remap(&frames, target?)?);
                }
                Instruction::BrTable(list.into(), remap(&frames, targets.default())?)
            }
            Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Delegate { .. }
            | Operator::Rethrow { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll => {
                return Err(format!("unsupported operator at {offset:#x}: {op:?}").into())
            }
            other => RoundtripReencoder.instruction(other.clone())?,
        };
        out.instruction(&instruction);
        func.op(offset, &op)?;
        match op {
            Operator::Block { .. } => frames.push(Frame::Original { block: true }),
            Operator::Loop { .. } | Operator::If { .. } => {
                frames.push(Frame::Original { block: false })
            }
            Operator::End | Operator::BrIf { .. } => {
                if matches!(op, Operator::End) {
                    let ended = frames.pop();
                    if !all && ended != Some(Frame::Original { block: true }) {
                        continue;
                    }
                } else if !all {
                    continue;
                }
                // Now in the enclosing frame (after an `end`, with the
                // block's results pushed) or still in the same one.
                let Some(parent) = func.get_control_frame(0) else {
                    continue;
                };
                let empty = func.operand_stack_height() as usize == parent.height;
                if parent.unreachable || !empty {
                    continue;
                }
                if let Some(ty) = wrap_type(func, parent.block_type) {
                    out.instruction(&Instruction::Loop(ty));
                    frames.push(Frame::Wrap);
                    stats.wraps += 1;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
