//! Hello over the HTTP trigger.
//!
//! - `GET /hello?name=Ada` or `POST /hello` with `{"name":"Ada"}` (or the
//!   plain text `Ada`) as the body: `200 {"greeting":"Hello, Ada!","hits":3}`.
//!   Without a name it greets `world`.
//! - Every greeting adds one to the `hits` counter in KV.
//! - Other methods get `405`, a name that is not UTF-8 or over 64 bytes `400`;
//!   both are answers, not failures, so the invocation still succeeds.
#![cfg_attr(target_arch = "wasm32", no_std)]

use heapless::String;
use serde::{Deserialize, Serialize};
use wasmgate_sdk::{Ctx, Error, Event, HttpRequest};

const MAX_NAME: usize = 64;

#[derive(Serialize)]
struct Greeting<'a> {
    greeting: &'a str,
    hits: i64,
}

#[derive(Deserialize)]
struct Body<'a> {
    name: Option<&'a str>,
}

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let Event::Http(request) = event else {
        return Err(Error::msg("hello-http handles HTTP requests only"));
    };
    if request.method != "GET" && request.method != "POST" {
        return ctx.respond(405, r#"{"error":"method not allowed, use GET or POST"}"#);
    }
    let mut name_buf = [0u8; MAX_NAME];
    let Some(name) = name_of(request, &mut name_buf) else {
        return ctx.respond(400, r#"{"error":"name must be UTF-8, at most 64 bytes"}"#);
    };

    let hits = ctx.kv_increment("hits", 1)?;
    let mut greeting: String<{ MAX_NAME + 16 }> = String::new();
    for part in ["Hello, ", name, "!"] {
        // Cannot fail: the name is at most MAX_NAME bytes.
        greeting
            .push_str(part)
            .map_err(|_| Error::msg("greeting too long"))?;
    }
    let mut out = [0u8; 256];
    let body = Greeting {
        greeting: &greeting,
        hits,
    };
    let len = serde_json_core::to_slice(&body, &mut out)
        .map_err(|_| Error::msg("reply over its buffer"))?;
    // A count that changes with every call: no cache may keep it.
    ctx.respond_header("cache-control", "no-store")?;
    ctx.respond(200, &out[..len])
}

/// The name from `?name=` (percent-decoded), else from the body, else `world`;
/// `None` if it is too long or not UTF-8.
fn name_of<'a>(request: &HttpRequest<'a>, buf: &'a mut [u8; MAX_NAME]) -> Option<&'a str> {
    if let Some(raw) = query_param(request.query, "name") {
        let len = percent_decode(raw, buf)?;
        return core::str::from_utf8(&buf[..len]).ok();
    }
    let body = request.body.trim_ascii();
    if body.is_empty() {
        return Some("world");
    }
    let name = match serde_json_core::from_slice::<Body>(body) {
        Ok((parsed, _)) => parsed.name.unwrap_or("world"),
        // Not JSON: the body is the name.
        Err(_) => core::str::from_utf8(body).ok()?,
    };
    (name.len() <= MAX_NAME).then_some(name)
}

/// The raw value of `key` in a query string like `a=1&name=Ada`.
fn query_param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Decodes `%XX` and `+` into `out`; `None` if it does not fit or is malformed.
fn percent_decode(raw: &str, out: &mut [u8]) -> Option<usize> {
    let mut bytes = raw.bytes();
    let mut len = 0;
    while let Some(b) = bytes.next() {
        let decoded = match b {
            b'+' => b' ',
            b'%' => {
                let hi = hex(bytes.next()?)?;
                let lo = hex(bytes.next()?)?;
                hi << 4 | lo
            }
            other => other,
        };
        *out.get_mut(len)? = decoded;
        len += 1;
    }
    Some(len)
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|d| d as u8)
}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{http, FakeHost};

    #[track_caller]
    fn request(
        host: &mut FakeHost,
        method: &str,
        query: &str,
        body: &str,
    ) -> (u16, std::string::String) {
        host.call(handle, &http(method, "/hello", query, body))
            .expect("invocation succeeds");
        let response = host.response().expect("a response");
        (response.status, response.text().to_owned())
    }

    #[test]
    fn get_greets_the_name_in_the_query() {
        let mut host = FakeHost::new();
        let (status, body) = request(&mut host, "GET", "name=Ada", "");
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"greeting":"Hello, Ada!","hits":1}"#);
    }

    #[test]
    fn a_greeting_is_not_to_be_cached() {
        let mut host = FakeHost::new();
        request(&mut host, "GET", "name=Ada", "");
        let headers = &host.response().unwrap().headers;
        assert_eq!(
            headers,
            &[("cache-control".to_string(), "no-store".to_string())]
        );
    }

    #[test]
    fn query_names_are_percent_decoded() {
        let mut host = FakeHost::new();
        let (_, body) = request(&mut host, "GET", "lang=en&name=Ada+Lovelace%21", "");
        assert!(body.contains("Hello, Ada Lovelace!!"), "{body}");
    }

    #[test]
    fn post_greets_the_name_in_a_json_or_text_body() {
        let mut host = FakeHost::new();
        let (_, body) = request(&mut host, "POST", "", r#"{"name":"Grace"}"#);
        assert!(body.contains("Hello, Grace!"), "{body}");
        let (_, body) = request(&mut host, "POST", "", "Linus\n");
        assert!(body.contains("Hello, Linus!"), "{body}");
    }

    #[test]
    fn without_a_name_it_greets_the_world() {
        let mut host = FakeHost::new();
        let (_, body) = request(&mut host, "GET", "", "");
        assert!(body.contains("Hello, world!"), "{body}");
    }

    #[test]
    fn names_are_escaped_in_the_json_reply() {
        let mut host = FakeHost::new();
        let (_, body) = request(&mut host, "GET", "name=%22x%22", "");
        assert_eq!(body, r#"{"greeting":"Hello, \"x\"!","hits":1}"#);
    }

    #[test]
    fn every_greeting_counts_a_hit() {
        let mut host = FakeHost::new();
        for _ in 0..3 {
            request(&mut host, "GET", "name=Ada", "");
        }
        assert_eq!(host.counter("hits"), Some(3));
        assert!(host.response().unwrap().text().contains(r#""hits":3"#));
    }

    #[test]
    fn other_methods_get_405_and_no_hit() {
        let mut host = FakeHost::new();
        let (status, _) = request(&mut host, "DELETE", "name=Ada", "");
        assert_eq!(status, 405);
        assert_eq!(host.counter("hits"), None);
    }

    #[test]
    fn an_overlong_or_malformed_name_gets_400() {
        let mut host = FakeHost::new();
        let long = format!("name={}", "a".repeat(65));
        assert_eq!(request(&mut host, "GET", &long, "").0, 400);
        assert_eq!(request(&mut host, "GET", "name=%ff", "").0, 400);
        assert_eq!(request(&mut host, "GET", "name=%zz", "").0, 400);
        assert_eq!(host.counter("hits"), None);
    }

    #[test]
    fn a_non_http_event_fails_the_invocation() {
        let mut host = FakeHost::new();
        let event = wasmgate_sdk::testing::mqtt("a/b", "x");
        assert!(host.call(handle, &event).is_err());
    }
}
