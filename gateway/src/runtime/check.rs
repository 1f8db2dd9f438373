//! What a module must satisfy before wasmi sees it: limits on the parts of
//! a module that wasmi handles by recursing on the native stack, or that it
//! compiles without fuel, so that no module can crash a deploy or stall it.

use wasmparser::{ConstExpr, DataKind, ElementItems, ElementKind, Operator, Parser, Payload};

/// The largest module deployed, in bytes. Functions are translated on their
/// first call without charging fuel (`Runtime::new`), and a translation
/// cannot be interrupted, so this bounds how far past its deadline the first
/// call that reaches all of a module's code can run: on an x86_64 build
/// machine wasmi translated a 4 MB function in ~150 ms and a 30 MB one in
/// ~1.3 s (which overran a 1 s deadline); a Raspberry Pi is several times
/// slower. Real guests are well under 2 MB. It also bounds validation at
/// deploy (~115 ms for 8 MiB on that machine).
pub const MAX_MODULE_BYTES: usize = 8 << 20;

/// How deeply an extended-const expression (a global's initialiser, an
/// element or data segment's offset, an element item) may nest. wasmi builds
/// and evaluates them as nested closures, one native stack frame per level:
/// a quarter of a million levels overflowed the stack at deploy. Compilers
/// emit two or three (`global.get $base` `i32.const` `i32.add`).
pub const MAX_CONST_EXPR_DEPTH: usize = 128;

/// Refuses a module over a limit, naming the limit. A module that does not
/// parse passes: wasmi's validation says what is wrong with it.
pub(crate) fn before_wasmi(wasm: &[u8]) -> Result<(), String> {
    if wasm.len() > MAX_MODULE_BYTES {
        return Err(format!(
            "the module is {} bytes; the most wasmgate deploys is {MAX_MODULE_BYTES}",
            wasm.len()
        ));
    }
    match const_exprs_too_deep(wasm) {
        Ok(None) | Err(_) => Ok(()),
        Ok(Some((what, depth))) => Err(format!(
            "{what} is a constant expression nested {depth} deep; \
             at most {MAX_CONST_EXPR_DEPTH} is allowed"
        )),
    }
}

/// The first constant expression nested deeper than [`MAX_CONST_EXPR_DEPTH`],
/// named, with its depth.
fn const_exprs_too_deep(wasm: &[u8]) -> wasmparser::Result<Option<(String, usize)>> {
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::GlobalSection(globals) => {
                for (index, global) in globals.into_iter().enumerate() {
                    if let Some(depth) = too_deep(&global?.init_expr)? {
                        return Ok(Some((format!("the initialiser of global {index}"), depth)));
                    }
                }
            }
            Payload::ElementSection(elements) => {
                for (index, element) in elements.into_iter().enumerate() {
                    let element = element?;
                    if let ElementKind::Active { offset_expr, .. } = &element.kind {
                        if let Some(depth) = too_deep(offset_expr)? {
                            return Ok(Some((
                                format!("the offset of element segment {index}"),
                                depth,
                            )));
                        }
                    }
                    if let ElementItems::Expressions(_, items) = element.items {
                        for item in items {
                            if let Some(depth) = too_deep(&item?)? {
                                return Ok(Some((
                                    format!("an item of element segment {index}"),
                                    depth,
                                )));
                            }
                        }
                    }
                }
            }
            Payload::DataSection(data) => {
                for (index, segment) in data.into_iter().enumerate() {
                    if let DataKind::Active { offset_expr, .. } = &segment?.kind {
                        if let Some(depth) = too_deep(offset_expr)? {
                            return Ok(Some((
                                format!("the offset of data segment {index}"),
                                depth,
                            )));
                        }
                    }
                }
            }
            // Function bodies come after every constant expression but the
            // data section's; skip them without reading them.
            Payload::CodeSectionStart { .. } | Payload::CodeSectionEntry(_) => {}
            _ => {}
        }
    }
    Ok(None)
}

/// The depth of `expr` if it is over the limit: each operand a leaf, each
/// binary operator one level above the deeper of its two operands.
fn too_deep(expr: &ConstExpr<'_>) -> wasmparser::Result<Option<usize>> {
    let mut depths: Vec<usize> = Vec::new();
    let mut reader = expr.get_operators_reader();
    while !reader.eof() {
        match reader.read()? {
            Operator::I32Add
            | Operator::I32Sub
            | Operator::I32Mul
            | Operator::I64Add
            | Operator::I64Sub
            | Operator::I64Mul => {
                // An invalid expression (too few operands): validation's to report.
                let (Some(a), Some(b)) = (depths.pop(), depths.pop()) else {
                    return Ok(None);
                };
                let depth = a.max(b) + 1;
                if depth > MAX_CONST_EXPR_DEPTH {
                    return Ok(Some(depth));
                }
                depths.push(depth);
            }
            Operator::End => break,
            _ => depths.push(1),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global_of_depth(depth: usize) -> Vec<u8> {
        let mut expr = String::from("(i32.const 1)");
        for _ in 1..depth {
            expr = format!("(i32.add {expr} (i32.const 1))");
        }
        wat::parse_str(format!("(module (global i32 {expr}))")).expect("parses")
    }

    #[test]
    fn const_exprs_up_to_the_limit_pass() {
        assert_eq!(before_wasmi(&global_of_depth(MAX_CONST_EXPR_DEPTH)), Ok(()));
    }

    #[test]
    fn a_const_expr_one_level_too_deep_is_refused_by_name() {
        let error = before_wasmi(&global_of_depth(MAX_CONST_EXPR_DEPTH + 1)).unwrap_err();
        assert!(error.contains("global 0"), "{error}");
        assert!(
            error.contains(&format!("nested {}", MAX_CONST_EXPR_DEPTH + 1)),
            "{error}"
        );
    }

    #[test]
    fn bytes_that_do_not_parse_are_left_to_wasmi() {
        assert_eq!(before_wasmi(b"not wasm"), Ok(()));
    }
}
