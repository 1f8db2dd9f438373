//! What a function can do during one invocation.

use crate::error::{check, Error};
use crate::host::{DefaultHost, Host};
use crate::line::LogLine;
use core::str::FromStr;
use wasmgate_abi::{Context, EmitOptions, LogLevel, MetricKind, Status};

/// The handle a function gets for one invocation: emits, KV, config, logs.
///
/// Everything it does (emits, KV writes, invokes) is buffered by the host and
/// committed together when the handler returns `Ok`; on `Err` none of it
/// happens (logs are kept). KV reads see this invocation's own writes.
///
/// `H` is the real host on `wasm32` and [`crate::testing::FakeHost`] natively;
/// functions just write `Ctx<'_>`.
pub struct Ctx<'a, H: Host + ?Sized = DefaultHost> {
    host: &'a mut H,
    context: Context<'a>,
}

impl<'a, H: Host + ?Sized> Ctx<'a, H> {
    pub fn new(host: &'a mut H, context: Context<'a>) -> Self {
        Ctx { host, context }
    }

    /// Request id, function name, version, attempt and deadline of this invocation.
    pub fn context(&self) -> &Context<'a> {
        &self.context
    }

    /// Publishes to the gateway's local broker with QoS 1 when the invocation commits.
    ///
    /// A topic with `+` or `#`, or starting with `$`, is
    /// [`Status::InvalidArgument`]; one the manifest does not grant is
    /// [`Status::Denied`].
    pub fn emit(&mut self, topic: &str, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        self.emit_with(topic, payload, EmitOptions::default())
    }

    /// Publishes to the cloud broker (QoS 1, through the durable outbox).
    pub fn emit_upstream(&mut self, topic: &str, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        self.emit_with(topic, payload, EmitOptions::upstream())
    }

    /// Publishes with explicit QoS, retain flag and destination.
    pub fn emit_with(
        &mut self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        options: EmitOptions,
    ) -> Result<(), Error> {
        let ret = self.host.emit(topic, payload.as_ref(), options.to_flags());
        check("emit", ret).map(drop)
    }

    /// Reads a KV value into `buf`: `None` if the key does not exist,
    /// [`Error::BufferTooSmall`] (with the size needed) if it does not fit.
    pub fn kv_get<'b>(&mut self, key: &str, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, Error> {
        let ret = self.host.kv_get(key, buf);
        copied_out("kv_get", ret, buf)
    }

    /// Reads a counter written by [`Ctx::kv_increment`] (or any 8-byte
    /// little-endian value); `None` if the key does not exist.
    pub fn kv_get_i64(&mut self, key: &str) -> Result<Option<i64>, Error> {
        let mut buf = [0u8; 8];
        match self.host.kv_get(key, &mut buf) {
            8 => Ok(Some(i64::from_le_bytes(buf))),
            ret if ret == Status::NotFound.code() => Ok(None),
            ret if ret >= 0 => Err(Error::Host {
                call: "kv_get",
                code: Status::NotANumber.code(),
            }),
            ret => Err(Error::Host {
                call: "kv_get",
                code: ret,
            }),
        }
    }

    /// Writes a KV value when the invocation commits.
    pub fn kv_put(&mut self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        let ret = self.host.kv_put(key, value.as_ref());
        check("kv_put", ret).map(drop)
    }

    /// Deletes a KV value when the invocation commits; a missing key is fine.
    pub fn kv_delete(&mut self, key: &str) -> Result<(), Error> {
        let ret = self.host.kv_delete(key);
        check("kv_delete", ret).map(drop)
    }

    /// Adds `delta` to a counter (a missing key counts as 0) and returns the
    /// new value. At commit the host *adds* `delta`, so concurrent invocations
    /// never lose an increment. A value that is not 8 bytes is
    /// [`Status::NotANumber`].
    pub fn kv_increment(&mut self, key: &str, delta: i64) -> Result<i64, Error> {
        let mut out = [0u8; 8];
        let ret = self.host.kv_increment(key, delta, &mut out);
        check("kv_increment", ret)?;
        Ok(i64::from_le_bytes(out))
    }

    /// A log line; see also the `error!`/`warn!`/`info!`/`debug!` macros.
    pub fn log(&mut self, level: LogLevel, msg: &str) {
        self.host.log(level, msg);
    }

    /// A log line joined from `parts` (cut at [`LogLine::CAPACITY`]), for
    /// the common "what happened: which topic" without `core::fmt`.
    pub fn log_parts(&mut self, level: LogLevel, parts: &[&str]) {
        let mut line = LogLine::new();
        for part in parts {
            line.push_str(part);
        }
        self.host.log(level, line.as_str());
    }

    /// Wall-clock time, Unix milliseconds.
    pub fn now_ms(&mut self) -> u64 {
        self.host.now_ms().max(0) as u64
    }

    /// Milliseconds left before the host stops this invocation.
    pub fn remaining_ms(&mut self) -> u64 {
        self.context.deadline_ms.saturating_sub(self.now_ms())
    }

    /// Reads a value of the function's `config` table into `buf`: `None` if
    /// it is not set, [`Error::BufferTooSmall`] if it does not fit.
    pub fn config<'b>(&mut self, key: &str, buf: &'b mut [u8]) -> Result<Option<&'b str>, Error> {
        let ret = self.host.config_get(key, buf);
        match copied_out("config_get", ret, buf)? {
            None => Ok(None),
            Some(bytes) => core::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| Error::Host {
                    call: "config_get",
                    code: Status::InvalidArgument.code(),
                }),
        }
    }

    /// Reads one of the function's secrets (`[functions.secrets]`, by a name
    /// in `grants.secrets`) into `buf`: `None` if there is none by that name,
    /// [`Error::Host`] with `DENIED` if the grants do not name it. Keep it
    /// out of logs: the host replaces a secret in a log line with `***`.
    pub fn secret<'b>(&mut self, name: &str, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, Error> {
        let ret = self.host.secret_get(name, buf);
        copied_out("secret_get", ret, buf)
    }

    /// Parses a config value (up to 64 bytes, surrounding spaces ignored), or
    /// returns `default` when it is not set. A value that does not parse is an
    /// error rather than a silent default: a typo in the config should show.
    pub fn config_or<T: FromStr>(&mut self, key: &str, default: T) -> Result<T, Error> {
        let mut buf = [0u8; 64];
        match self.config(key, &mut buf)? {
            None => Ok(default),
            Some(text) => text.trim().parse().map_err(|_| {
                self.log(LogLevel::Error, key);
                Error::msg("a config value does not parse (its key is logged above)")
            }),
        }
    }

    /// Runs another function with an `Invoke` event after this invocation commits.
    pub fn invoke(&mut self, function: &str, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        let ret = self.host.invoke(function, payload.as_ref());
        check("invoke", ret).map(drop)
    }

    /// Sets the reply to a request/response trigger (HTTP: `status` is the
    /// HTTP status, 100-599). A later call replaces an earlier one; without
    /// one an HTTP request gets `204`.
    pub fn respond(&mut self, status: u16, body: impl AsRef<[u8]>) -> Result<(), Error> {
        let ret = self.host.respond(status.into(), body.as_ref());
        check("respond", ret).map(drop)
    }

    /// Adds a header to the reply (`content-type`, `cache-control`...),
    /// before or after `respond`. Names the gateway sets itself
    /// (`content-length`, `x-request-id`, the connection's framing) are
    /// refused, as are control characters; at most 32 headers.
    pub fn respond_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        let ret = self.host.respond_header(name, value);
        check("respond_header", ret).map(drop)
    }

    /// Sends `data` to a WebSocket connection (by the `connection_id` of its
    /// events) once this invocation commits, as API Gateway's
    /// `post_to_connection`: text if it is UTF-8, else binary. A connection
    /// that has closed by then is skipped. At most 100 per invocation.
    pub fn post_to_connection(
        &mut self,
        connection: &str,
        data: impl AsRef<[u8]>,
    ) -> Result<(), Error> {
        let ret = self.host.post_to_connection(connection, data.as_ref());
        check("post_to_connection", ret).map(drop)
    }

    /// Adds `delta` (0 or more) to a counter of this function's in the
    /// gateway's `/metrics` (`wasmgate_fn_<function>_<name>`). `name` may
    /// carry up to 3 labels, `dispensed{slot="a3"}`; keep their values few
    /// (a slot, not a device id): a function has at most 32 names and 256
    /// label sets, and the gateway drops (and counts) updates past them.
    /// Applied only if this invocation succeeds.
    pub fn counter(&mut self, name: &str, delta: f64) -> Result<(), Error> {
        self.metric(name, MetricKind::Counter, delta)
    }

    /// Sets a gauge (see [`Ctx::counter`] for names and bounds).
    pub fn gauge(&mut self, name: &str, value: f64) -> Result<(), Error> {
        self.metric(name, MetricKind::Gauge, value)
    }

    /// Records a value in a histogram (buckets 1, 2.5, 5 x 10^-3 .. 10^4;
    /// see [`Ctx::counter`] for names and bounds).
    pub fn observe(&mut self, name: &str, value: f64) -> Result<(), Error> {
        self.metric(name, MetricKind::Histogram, value)
    }

    fn metric(&mut self, name: &str, kind: MetricKind, value: f64) -> Result<(), Error> {
        let ret = self.host.metric(name, kind, value);
        check("metric", ret).map(drop)
    }

    /// Reports the batch's item number `index` (as [`crate::events`] walks
    /// them, from 0) failed, as Lambda's `ReportBatchItemFailures`: only the
    /// items reported are retried and dead-lettered; the others commit with
    /// this invocation's effects, so a function should make none for an
    /// item it reports. `INVALID_ARGUMENT` outside a batch or past its end.
    pub fn item_failed(&mut self, index: usize) -> Result<(), Error> {
        let ret = self
            .host
            .item_failed(i32::try_from(index).unwrap_or(i32::MAX));
        check("item_failed", ret).map(drop)
    }
}

impl<H: Host + ?Sized> core::fmt::Debug for Ctx<'_, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ctx")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// Applies the copy-out rule: a length that exceeds `buf` means nothing was copied.
fn copied_out<'b>(call: &'static str, ret: i32, buf: &'b [u8]) -> Result<Option<&'b [u8]>, Error> {
    if ret == Status::NotFound.code() {
        return Ok(None);
    }
    let len = check(call, ret)?;
    match buf.get(..len) {
        Some(value) => Ok(Some(value)),
        None => Err(Error::BufferTooSmall {
            call,
            needed: len,
            capacity: buf.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::FakeHost;
    use crate::{Destination, EmitOptions, Error, LogLevel, LogLine, Status};

    #[test]
    fn log_parts_joins_its_parts_into_one_line_cut_at_the_capacity() {
        let mut host = FakeHost::new();
        host.ctx()
            .log_parts(LogLevel::Warn, &["bad JSON on ", "vending/vm-1/telemetry"]);
        assert!(host.logged(LogLevel::Warn, "bad JSON on vending/vm-1/telemetry"));
        let long = "x".repeat(LogLine::CAPACITY);
        host.ctx().log_parts(LogLevel::Info, &["head ", &long]);
        let line = &host.logs().last().unwrap().message;
        assert!(
            line.starts_with("head x") && line.len() <= LogLine::CAPACITY,
            "{line}"
        );
    }

    #[test]
    fn emits_default_to_qos_1_on_the_local_broker() {
        let mut host = FakeHost::new();
        host.ctx().emit("vending/vm-1/alert", "hot").unwrap();
        let emit = &host.emits()[0];
        assert_eq!(emit.topic, "vending/vm-1/alert");
        assert_eq!(emit.payload, b"hot");
        assert_eq!(emit.options, EmitOptions::default());
    }

    #[test]
    fn upstream_emits_go_to_the_cloud_broker() {
        let mut host = FakeHost::new();
        host.ctx().emit_upstream("telemetry/x", [1, 2]).unwrap();
        assert_eq!(host.emits()[0].options.destination, Destination::Upstream);
    }

    #[test]
    fn emitting_to_a_wildcard_topic_is_an_invalid_argument() {
        let mut host = FakeHost::new();
        let err = host.ctx().emit("vending/+/alert", "x").unwrap_err();
        assert_eq!(err.status(), Some(Status::InvalidArgument));
        assert!(host.emits().is_empty());
    }

    #[test]
    fn emitting_to_a_denied_topic_is_denied() {
        let mut host = FakeHost::new();
        host.deny("secret/topic");
        let err = host.ctx().emit("secret/topic", "x").unwrap_err();
        assert_eq!(err.status(), Some(Status::Denied));
    }

    #[test]
    fn a_missing_kv_key_reads_as_none() {
        let mut host = FakeHost::new();
        let mut buf = [0u8; 16];
        assert_eq!(host.ctx().kv_get("nope", &mut buf), Ok(None));
        assert_eq!(host.ctx().kv_get_i64("nope"), Ok(None));
    }

    #[test]
    fn kv_reads_see_the_invocations_own_writes() {
        let mut host = FakeHost::new();
        let mut ctx = host.ctx();
        ctx.kv_put("last", "6.8").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(ctx.kv_get("last", &mut buf).unwrap(), Some(&b"6.8"[..]));
        ctx.kv_delete("last").unwrap();
        assert_eq!(ctx.kv_get("last", &mut buf).unwrap(), None);
    }

    #[test]
    fn a_kv_value_bigger_than_the_buffer_says_how_big_it_is() {
        let mut host = FakeHost::new();
        host.set_kv("big", [7u8; 100]);
        let mut buf = [0u8; 10];
        let err = host.ctx().kv_get("big", &mut buf).unwrap_err();
        assert_eq!(
            err,
            Error::BufferTooSmall {
                call: "kv_get",
                needed: 100,
                capacity: 10
            }
        );
        assert_eq!(
            buf, [0u8; 10],
            "copy-out copies nothing when it does not fit"
        );
    }

    #[test]
    fn increments_add_up_and_read_back_as_counters() {
        let mut host = FakeHost::new();
        let mut ctx = host.ctx();
        assert_eq!(ctx.kv_increment("sales", 150), Ok(150));
        assert_eq!(ctx.kv_increment("sales", -50), Ok(100));
        assert_eq!(ctx.kv_get_i64("sales"), Ok(Some(100)));
        assert_eq!(host.counter("sales"), Some(100));
    }

    #[test]
    fn incrementing_a_value_that_is_not_a_counter_is_not_a_number() {
        let mut host = FakeHost::new();
        host.set_kv("name", "vm-17");
        let err = host.ctx().kv_increment("name", 1).unwrap_err();
        assert_eq!(err.status(), Some(Status::NotANumber));
        assert_eq!(
            host.ctx().kv_get_i64("name").unwrap_err().status(),
            Some(Status::NotANumber)
        );
    }

    #[test]
    fn an_empty_key_is_an_invalid_argument() {
        let mut host = FakeHost::new();
        let err = host.ctx().kv_put("", "x").unwrap_err();
        assert_eq!(err.status(), Some(Status::InvalidArgument));
    }

    #[test]
    fn config_values_are_read_as_text_or_parsed_with_a_default() {
        let mut host = FakeHost::new();
        host.set_config("max_temp_c", " 7.5 ");
        let mut ctx = host.ctx();
        let mut buf = [0u8; 16];
        assert_eq!(ctx.config("max_temp_c", &mut buf), Ok(Some(" 7.5 ")));
        assert_eq!(ctx.config("missing", &mut buf), Ok(None));
        assert_eq!(ctx.config_or("max_temp_c", 8.0f32), Ok(7.5));
        assert_eq!(ctx.config_or("low_stock", 2u32), Ok(2));
    }

    #[test]
    fn a_secret_is_read_by_name_and_a_denied_one_is_an_error() {
        let mut host = FakeHost::new();
        host.set_secret("api-key", "sk-1").deny("other");
        let mut ctx = host.ctx();
        let mut buf = [0u8; 16];
        assert_eq!(ctx.secret("api-key", &mut buf), Ok(Some(&b"sk-1"[..])));
        assert_eq!(ctx.secret("missing", &mut buf), Ok(None));
        let err = ctx.secret("other", &mut buf).unwrap_err();
        assert_eq!(err.status(), Some(Status::Denied));
    }

    #[test]
    fn a_config_value_that_does_not_parse_fails_and_names_its_key() {
        let mut host = FakeHost::new();
        host.set_config("low_stock", "two");
        assert!(host.ctx().config_or("low_stock", 2u32).is_err());
        assert!(host.logged(LogLevel::Error, "low_stock"));
    }

    #[test]
    fn respond_rejects_statuses_outside_http_range_and_keeps_the_last_reply() {
        let mut host = FakeHost::new();
        let mut ctx = host.ctx();
        assert_eq!(
            ctx.respond(99, "").unwrap_err().status(),
            Some(Status::InvalidArgument)
        );
        ctx.respond(500, "first").unwrap();
        ctx.respond(200, "second").unwrap();
        let response = host.response().unwrap();
        assert_eq!((response.status, &response.body[..]), (200, &b"second"[..]));
    }

    #[test]
    fn invokes_are_recorded_unless_denied() {
        let mut host = FakeHost::new();
        host.deny("billing");
        let mut ctx = host.ctx();
        ctx.invoke("report", "{}").unwrap();
        assert_eq!(
            ctx.invoke("billing", "{}").unwrap_err().status(),
            Some(Status::Denied)
        );
        assert_eq!(host.invokes().len(), 1);
        assert_eq!(host.invokes()[0].function, "report");
    }

    #[test]
    fn time_and_deadline_come_from_the_host() {
        let mut host = FakeHost::new();
        host.set_now_ms(1_000);
        let mut ctx = host.ctx();
        assert_eq!(ctx.now_ms(), 1_000);
        assert_eq!(ctx.remaining_ms(), ctx.context().deadline_ms - 1_000);
    }

    #[test]
    fn log_macros_format_into_one_line() {
        let mut host = FakeHost::new();
        let mut ctx = host.ctx();
        crate::warn!(ctx, "temp {:.1} over {}", 9.26, 8);
        assert_eq!(host.logs()[0].level, LogLevel::Warn);
        assert_eq!(host.logs()[0].message, "temp 9.3 over 8");
    }
}
