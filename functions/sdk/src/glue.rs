//! What `wasmgate_handle` does, written against [`Host`] so it is tested natively.

use crate::ctx::Ctx;
use crate::error::{codes, Error};
use crate::host::Host;
use crate::line::LogLine;
use wasmgate_abi::{Envelope, Event, LogLevel};

/// Runs one invocation the way the exported `wasmgate_handle` does: reads the
/// envelope of `event_len` bytes into `buf` with `event_read`, decodes it,
/// calls `handler`, and returns `0` on success. Every failure is logged at
/// error level and returns a non-zero code (see [`codes`]); an event bigger
/// than `buf` is such a failure, never a partial read.
pub fn run<H, F>(host: &mut H, buf: &mut [u8], event_len: i32, handler: F) -> i32
where
    H: Host + ?Sized,
    F: for<'e, 'c> FnOnce(&Event<'e>, &mut Ctx<'c, H>) -> Result<(), Error>,
{
    let capacity = buf.len();
    let fits = usize::try_from(event_len).is_ok_and(|len| len <= capacity);
    if !fits {
        event_too_big(host, i64::from(event_len), capacity);
        return codes::EVENT_TOO_BIG;
    }
    // Copy-out: a length over `capacity` means nothing was copied.
    let read = host.event_read(buf);
    let Some(bytes) = usize::try_from(read).ok().and_then(|len| buf.get(..len)) else {
        event_too_big(host, i64::from(read), capacity);
        return codes::EVENT_TOO_BIG;
    };
    let Ok(envelope) = Envelope::decode(bytes) else {
        return fail(host, &Error::BadEnvelope);
    };
    let mut ctx = Ctx::new(&mut *host, envelope.context);
    match handler(&envelope.event, &mut ctx) {
        Ok(()) => 0,
        Err(err) => fail(host, &err),
    }
}

fn fail<H: Host + ?Sized>(host: &mut H, err: &Error) -> i32 {
    let mut line = LogLine::new();
    line.push_str("function failed: ");
    err.write_to(&mut line);
    host.log(LogLevel::Error, line.as_str());
    err.code()
}

fn event_too_big<H: Host + ?Sized>(host: &mut H, len: i64, capacity: usize) {
    let mut line = LogLine::new();
    line.push_str("function failed: the event is ");
    line.push_int(len);
    line.push_str(" bytes, over its event buffer of ");
    line.push_int(capacity as i64);
    line.push_str(" bytes; raise it with `export!(handler, event_buffer = BYTES)`");
    host.log(LogLevel::Error, line.as_str());
}

#[cfg(test)]
mod tests {
    use crate::codes;
    use crate::testing::{mqtt, FakeHost};
    use crate::{Ctx, Error, Event, LogLevel};

    fn echo(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        let Event::Mqtt(msg) = event else {
            return Err(Error::user(7, "expected an MQTT message"));
        };
        ctx.emit("echo", msg.payload)
    }

    #[test]
    fn a_successful_invocation_returns_zero_and_commits() {
        let mut host = FakeHost::new();
        assert_eq!(host.handle_encoded(&mqtt("a/b", "hi"), 1024, echo), 0);
        assert_eq!(host.emits()[0].payload, b"hi");
    }

    #[test]
    fn an_event_bigger_than_the_buffer_fails_with_a_log_line() {
        let mut host = FakeHost::new();
        let payload = "x".repeat(200);
        let code = host.handle_encoded(&mqtt("a/b", &payload), 64, echo);
        assert_eq!(code, codes::EVENT_TOO_BIG);
        assert!(host.logged(LogLevel::Error, "over its event buffer of 64 bytes"));
        assert!(host.emits().is_empty());
    }

    #[test]
    fn a_failing_handler_returns_its_code_and_logs_the_error() {
        let mut host = FakeHost::new();
        let code = host.handle_encoded(&crate::testing::schedule("hourly", 1), 1024, echo);
        assert_eq!(code, 7);
        assert!(host.logged(
            LogLevel::Error,
            "function failed: expected an MQTT message (code 7)"
        ));
    }

    #[test]
    fn a_failed_host_call_fails_the_invocation_and_commits_nothing() {
        let mut host = FakeHost::new();
        host.deny("echo");
        let code = host.handle_encoded(&mqtt("a/b", "hi"), 1024, echo);
        assert_eq!(code, crate::Status::Denied.code());
        assert!(host.logged(LogLevel::Error, "emit failed: denied"));
    }

    #[test]
    fn an_envelope_that_does_not_decode_fails_cleanly() {
        let mut host = FakeHost::new();
        host.set_event_bytes(&[0xff, 0xff, 0xff]);
        assert_eq!(
            crate::run(&mut host, &mut [0u8; 64], 3, echo),
            codes::BAD_ENVELOPE
        );
        assert!(host.logged(LogLevel::Error, "does not decode"));
    }

    #[test]
    fn a_negative_event_length_is_refused_before_reading() {
        let mut host = FakeHost::new();
        assert_eq!(
            crate::run(&mut host, &mut [0u8; 64], -1, echo),
            codes::EVENT_TOO_BIG
        );
    }
}
