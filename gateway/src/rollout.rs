//! Rollouts: a new version takes a share of a function's events, is judged
//! on what it does with them, and either takes them all or is rolled back
//! (CodeDeploy's deployment configurations, on the `live` alias).
//!
//! `canary<P>-<D>` gives the new version P% for D, then 100%;
//! `linear<P>-every-<D>` adds P% every D until 100%; `all-at-once` moves at
//! once. D is minutes (`5m`) or seconds (`30s`). CodeDeploy's names
//! (`Canary10Percent5Minutes`, `Linear10PercentEvery1Minute`,
//! `AllAtOnce`) are taken too.
//!
//! While the new version shares the events, its invocations and the old
//! one's are compared once a second. It is rolled back when its failure
//! rate is above `max_error_rate` and above the old version's over the same
//! time, or its p99 duration is above `max_p99`. A rollback points `live`
//! back at the old version alone, logs why with the figures, and keeps the
//! new version (`wasmgate versions` lists it). Each step is recorded in
//! SQLite (`store::deployments`): a gateway stopped, or killed, during a
//! rollout cannot judge a window it did not see, so at its next start it
//! rolls the rollout back, saying so.

use crate::registry::{Registry, RegistryError};
use crate::runtime::Function;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a new version takes the events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    AllAtOnce,
    /// `percent` of the events for `window`, then all.
    Canary {
        percent: u32,
        window: Duration,
    },
    /// `percent` more every `every`, until all.
    Linear {
        percent: u32,
        every: Duration,
    },
}

impl Strategy {
    /// Reads `canary10-5m`, `linear20-every-30s`, `all-at-once`, or their
    /// CodeDeploy names.
    pub fn parse(text: &str) -> Result<Strategy, String> {
        let lower = text.trim().to_ascii_lowercase();
        let expected = "expected all-at-once, canary<P>-<M>m (as canary10-5m), linear<P>-every-<M>m (as linear10-every-1m), seconds as 30s, or CodeDeploy's names (Canary10Percent5Minutes, Linear10PercentEvery1Minute, AllAtOnce)";
        if lower == "all-at-once" || lower == "allatonce" {
            return Ok(Strategy::AllAtOnce);
        }
        let bad = || format!("strategy {text:?}: {expected}");
        let (kind, rest) = if let Some(rest) = lower.strip_prefix("canary") {
            ("canary", rest)
        } else if let Some(rest) = lower.strip_prefix("linear") {
            ("linear", rest)
        } else {
            return Err(bad());
        };
        // Ours: 10-5m, 10-every-5m. CodeDeploy's: 10percent5minutes,
        // 10percentevery1minute.
        let (percent, duration) = if let Some((p, d)) = rest.split_once("percent") {
            let d = d.strip_prefix("every").unwrap_or(d);
            let unit = ["minutes", "minute", "seconds", "second"]
                .iter()
                .find(|u| d.ends_with(*u))
                .ok_or_else(bad)?;
            let n = &d[..d.len() - unit.len()];
            let short = if unit.starts_with('m') { "m" } else { "s" };
            (p.to_owned(), format!("{n}{short}"))
        } else {
            let (p, d) = rest.split_once('-').ok_or_else(bad)?;
            let d = match kind {
                "linear" => d.strip_prefix("every-").ok_or_else(bad)?,
                _ => d,
            };
            (p.to_owned(), d.to_owned())
        };
        let percent: u32 = percent.parse().map_err(|_| bad())?;
        if !(1..=99).contains(&percent) {
            return Err(format!(
                "strategy {text:?}: the share is 1 to 99 percent, not {percent}"
            ));
        }
        let duration = parse_duration(&duration).ok_or_else(bad)?;
        if duration < Duration::from_secs(1) || duration > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "strategy {text:?}: each step lasts 1 second to 24 hours"
            ));
        }
        Ok(match kind {
            "canary" => Strategy::Canary {
                percent,
                window: duration,
            },
            _ => Strategy::Linear {
                percent,
                every: duration,
            },
        })
    }

    /// The new version's share at each step, and how long each lasts; the
    /// last step (all) is not listed.
    pub fn steps(&self) -> Vec<(f64, Duration)> {
        match *self {
            Strategy::AllAtOnce => Vec::new(),
            Strategy::Canary { percent, window } => vec![(f64::from(percent) / 100.0, window)],
            Strategy::Linear { percent, every } => (1..)
                .map(|i| i * percent)
                .take_while(|p| *p < 100)
                .map(|p| (f64::from(p) / 100.0, every))
                .collect(),
        }
    }

    /// As `wasmgate deployments` shows it.
    pub fn name(&self) -> String {
        let d = |d: Duration| {
            let s = d.as_secs();
            if s.is_multiple_of(60) {
                format!("{}m", s / 60)
            } else {
                format!("{s}s")
            }
        };
        match *self {
            Strategy::AllAtOnce => "all-at-once".to_owned(),
            Strategy::Canary { percent, window } => format!("canary{percent}-{}", d(window)),
            Strategy::Linear { percent, every } => format!("linear{percent}-every-{}", d(every)),
        }
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    if let Some(n) = text.strip_suffix('m') {
        return Some(Duration::from_secs(n.parse::<u64>().ok()?.checked_mul(60)?));
    }
    Some(Duration::from_secs(text.strip_suffix('s')?.parse().ok()?))
}

/// When a rollout rolls back.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarms {
    /// The new version's failed share of its invocations, above which (and
    /// above the old version's) it is rolled back.
    pub max_error_rate: f64,
    /// Its p99 invocation time, above which it is rolled back.
    pub max_p99: Option<Duration>,
    /// Functions invoked with a test event before the new version takes
    /// any event, and after it took them all (CodeDeploy's BeforeAllowTraffic
    /// and AfterAllowTraffic hooks): a failure rolls back.
    pub pre_traffic_hook: Option<String>,
    pub post_traffic_hook: Option<String>,
}

impl Default for Alarms {
    fn default() -> Self {
        Alarms {
            max_error_rate: 0.05,
            max_p99: None,
            pre_traffic_hook: None,
            post_traffic_hook: None,
        }
    }
}

/// Failures are judged once a version has run this many times: one
/// failure of two is not yet a rate.
pub const MIN_INVOCATIONS: u64 = 5;

/// What both versions did since the rollout started.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Figures {
    pub new_ok: u64,
    pub new_failed: u64,
    pub old_ok: u64,
    pub old_failed: u64,
    /// The new version's p99 in the current step, microseconds: the lower
    /// bound of its histogram bucket (buckets are powers of two, so the
    /// real value is at most twice this), and how many runs it is of.
    pub new_p99_us: Option<u64>,
    pub new_step_runs: u64,
    /// Events each version sent to the dead-letter queue.
    pub new_dead_letters: u64,
    pub old_dead_letters: u64,
}

impl Figures {
    fn rate(ok: u64, failed: u64) -> f64 {
        if ok + failed == 0 {
            0.0
        } else {
            failed as f64 / (ok + failed) as f64
        }
    }

    pub fn new_rate(&self) -> f64 {
        Self::rate(self.new_ok, self.new_failed)
    }

    pub fn old_rate(&self) -> f64 {
        Self::rate(self.old_ok, self.old_failed)
    }

    fn add(&mut self, other: &Figures) {
        self.new_ok += other.new_ok;
        self.new_failed += other.new_failed;
        self.old_ok += other.old_ok;
        self.old_failed += other.old_failed;
        self.new_p99_us = other.new_p99_us.or(self.new_p99_us);
        self.new_step_runs = other.new_step_runs;
        self.new_dead_letters += other.new_dead_letters;
        self.old_dead_letters += other.old_dead_letters;
    }
}

/// Why the figures call for a rollback, if they do.
pub fn judge(figures: &Figures, alarms: &Alarms) -> Option<String> {
    let runs = figures.new_ok + figures.new_failed;
    let (new, old) = (figures.new_rate(), figures.old_rate());
    if runs >= MIN_INVOCATIONS && new > alarms.max_error_rate && new > old {
        return Some(format!(
            "the new version failed {} of {runs} invocations ({:.1}%), over the {:.1}% allowed and the old version's {:.1}% ({} of {})",
            figures.new_failed,
            new * 100.0,
            alarms.max_error_rate * 100.0,
            old * 100.0,
            figures.old_failed,
            figures.old_ok + figures.old_failed,
        ));
    }
    if figures.new_dead_letters > 0 && figures.old_dead_letters == 0 {
        return Some(format!(
            "the new version is dead-lettering: {} event(s) to the dead-letter queue, the old version none",
            figures.new_dead_letters
        ));
    }
    if let (Some(bound), Some(p99)) = (alarms.max_p99, figures.new_p99_us) {
        if figures.new_step_runs >= MIN_INVOCATIONS && p99 > bound.as_micros() as u64 {
            return Some(format!(
                "the new version's p99 duration is over {:.1} ms, above the {:.1} ms allowed",
                p99 as f64 / 1000.0,
                bound.as_secs_f64() * 1000.0
            ));
        }
    }
    None
}

/// What a started rollout answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Started {
    pub deployment: i64,
    pub function: String,
    pub from: String,
    pub to: String,
    pub strategy: String,
    /// The new version's share now.
    pub share: f64,
}

/// How often a rollout looks at the figures.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Publishes `wasm` and starts rolling it out; the rollout goes on in a
/// thread of its own. All at once is a deploy, recorded as a rollout.
pub fn start(
    registry: &Arc<Registry>,
    name: &str,
    wasm: &[u8],
    (source, by): (&str, &str),
    strategy: Strategy,
    alarms: Alarms,
) -> Result<Started, RegistryError> {
    let live = registry.live_of(name)?;
    for hook in [&alarms.pre_traffic_hook, &alarms.post_traffic_hook]
        .into_iter()
        .flatten()
    {
        if !registry.knows(hook) {
            return Err(RegistryError::UnknownFunction(hook.clone()));
        }
    }
    if !registry.rollouts().claim(name) {
        return Err(RegistryError::RolloutUnderWay(name.to_owned()));
    }
    let release = |e| {
        registry.rollouts().release(name);
        e
    };
    // Ends a rollout that did not get going: recorded rolled back, the
    // function free for the next.
    let stop = |id: i64, reason: &str, e: RegistryError| {
        let _ = registry
            .store()
            .update_deployment(id, "rolled_back", 0.0, Some(reason), None);
        release(e)
    };
    let row = registry.publish(name, wasm, source, by).map_err(release)?;
    let from = live.current().version().to_owned();
    let to = row.version.clone();
    let steps = strategy.steps();
    if from == to {
        registry.rollouts().release(name);
        return Err(RegistryError::SameVersion {
            function: name.to_owned(),
            version: to,
        });
    }
    let first = steps.first().map_or(1.0, |(share, _)| *share);
    let id = registry
        .store()
        .start_deployment(name, &from, &to, &strategy.name(), first)
        .map_err(|e| release(e.into()))?;
    let stage = Stage {
        id,
        function: name,
        from: &from,
        to: &to,
    };
    if let Some(hook) = &alarms.pre_traffic_hook {
        if let Err(reason) = stage.hook(registry, hook, "pre-traffic") {
            tracing::warn!(
                function = name,
                to,
                "rollout stopped before any traffic: {reason}"
            );
            return Err(stop(id, &reason, RegistryError::HookFailed(reason.clone())));
        }
    }
    let moved = match steps.first() {
        None => registry.point(name, &to),
        Some((share, _)) => registry.route(name, &from, Some((&to, *share))),
    };
    if let Err(e) = moved {
        return Err(stop(id, &format!("the new version did not start: {e}"), e));
    }
    let started = Started {
        deployment: id,
        function: name.to_owned(),
        from: from.clone(),
        to: to.clone(),
        strategy: strategy.name(),
        share: first,
    };
    if steps.is_empty() {
        if let Some(hook) = &alarms.post_traffic_hook {
            if let Err(reason) = stage.hook(registry, hook, "post-traffic") {
                let _ = registry.point(name, &started.from);
                tracing::warn!(function = name, to, "rollout rolled back: {reason}");
                return Err(stop(id, &reason, RegistryError::HookFailed(reason.clone())));
            }
        }
        let _ = registry
            .store()
            .update_deployment(id, "succeeded", 1.0, None, None);
        registry.rollouts().release(name);
        return Ok(started);
    }
    tracing::info!(function = name, from, to, strategy = %strategy.name(), "rollout started");
    let rollout = Rollout {
        id,
        function: name.to_owned(),
        from,
        to,
        steps,
        alarms,
    };
    let watcher = registry.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("rollout-{name}"))
        .spawn(move || {
            rollout.run(&watcher);
            watcher.rollouts().release(&rollout.function);
        });
    if let Err(e) = spawned {
        // Nothing would judge the split: back to the old version alone.
        let reason = format!("cannot start the rollout's thread: {e}");
        let _ = registry.point(name, &started.from);
        return Err(stop(id, &reason, RegistryError::Start(reason.clone())));
    }
    Ok(started)
}

/// Who a hook is told about.
struct Stage<'a> {
    id: i64,
    function: &'a str,
    from: &'a str,
    to: &'a str,
}

impl Stage<'_> {
    /// Runs `hook` (a configured function, its live version, its effects
    /// committed) on an `invoke` event whose payload says which rollout
    /// and stage: `{"deployment":7,"function":"vending","from":..,"to":..,
    /// "stage":"pre-traffic"}`. Its failure is the reason to stop.
    fn hook(&self, registry: &Registry, hook: &str, stage: &str) -> Result<(), String> {
        let payload = serde_json::json!({
            "deployment": self.id,
            "function": self.function,
            "from": self.from,
            "to": self.to,
            "stage": stage,
        });
        let event = crate::event::OwnedEvent::Invoke {
            from: format!("rollout:{}", self.function),
            payload: payload.to_string().into_bytes(),
        };
        match registry.invoke(hook, &event, false) {
            Ok(invoked) => match invoked.report.outcome {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("the {stage} hook {hook} failed: {e}")),
            },
            Err(e) => Err(format!("the {stage} hook {hook} could not run: {e}")),
        }
    }
}

struct Rollout {
    id: i64,
    function: String,
    from: String,
    to: String,
    steps: Vec<(f64, Duration)>,
    alarms: Alarms,
}

impl Rollout {
    fn run(&self, registry: &Registry) {
        let mut total = Figures::default();
        for (i, &(share, lasts)) in self.steps.iter().enumerate() {
            if i > 0 {
                if let Err(e) = registry.route(&self.function, &self.from, Some((&self.to, share)))
                {
                    return self.roll_back(
                        registry,
                        &format!("step to {share} failed: {e}"),
                        &total,
                    );
                }
                self.record(registry, "running", share, None, &total);
            }
            let began = Instant::now();
            let mut step = Figures::default();
            while began.elapsed() < lasts {
                std::thread::sleep(CHECK_EVERY.min(lasts.saturating_sub(began.elapsed())));
                let Some(now) = self.figures(registry) else {
                    self.record(
                        registry,
                        "superseded",
                        share,
                        Some(
                            "the live alias was moved by hand during the rollout; it stopped there",
                        ),
                        &total,
                    );
                    tracing::warn!(function = %self.function, "rollout stopped: the live alias was moved by hand");
                    return;
                };
                step = now;
                let mut so_far = total;
                so_far.add(&step);
                if let Some(reason) = judge(&so_far, &self.alarms) {
                    return self.roll_back(registry, &reason, &so_far);
                }
            }
            total.add(&step);
        }
        let ended = registry
            .point(&self.function, &self.to)
            .map_err(|e| format!("the last step failed: {e}"))
            .and_then(|_| match &self.alarms.post_traffic_hook {
                Some(hook) => {
                    let stage = Stage {
                        id: self.id,
                        function: &self.function,
                        from: &self.from,
                        to: &self.to,
                    };
                    stage.hook(registry, hook, "post-traffic")
                }
                None => Ok(()),
            });
        match ended {
            Ok(()) => {
                tracing::info!(function = %self.function, to = %self.to, figures = ?total, "rollout succeeded: the new version takes every event");
                self.record(registry, "succeeded", 1.0, None, &total);
            }
            Err(reason) => self.roll_back(registry, &reason, &total),
        }
    }

    /// Both versions' figures in the current step, if `live` is still as
    /// this rollout set it.
    fn figures(&self, registry: &Registry) -> Option<Figures> {
        let routing = registry.live_of(&self.function).ok()?.routing();
        let (new, _) = routing.secondary.as_ref()?;
        let old = &routing.primary;
        if old.version() != self.from || new.version() != self.to {
            return None;
        }
        let counts = |f: &Arc<Function>| {
            let u = f.usage();
            (
                u.ok.load(std::sync::atomic::Ordering::Relaxed),
                u.failed.load(std::sync::atomic::Ordering::Relaxed),
            )
        };
        let (new_ok, new_failed) = counts(new);
        let (old_ok, old_failed) = counts(old);
        let dead = |f: &Arc<Function>| {
            f.usage()
                .dead_letters
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        Some(Figures {
            new_ok,
            new_failed,
            old_ok,
            old_failed,
            new_p99_us: new
                .usage()
                .duration
                .snapshot()
                .quantile(0.99)
                .map(|upper| upper.as_micros() as u64 / 2),
            new_step_runs: new_ok + new_failed,
            new_dead_letters: dead(new),
            old_dead_letters: dead(old),
        })
    }

    fn roll_back(&self, registry: &Registry, reason: &str, figures: &Figures) {
        tracing::warn!(function = %self.function, from = %self.to, to = %self.from, ?figures, "rollout rolled back: {reason}");
        // The bad version keeps its share while live is not moved back:
        // tried again a few times before giving up, saying so.
        let mut moved = registry.point(&self.function, &self.from);
        for _ in 0..5 {
            if moved.is_ok() {
                break;
            }
            std::thread::sleep(CHECK_EVERY);
            moved = registry.point(&self.function, &self.from);
        }
        let reason = match moved {
            Ok(_) => reason.to_owned(),
            Err(e) => format!(
                "{reason}; and moving live back failed: {e} (move it with `wasmgate alias`)"
            ),
        };
        self.record(registry, "rolled_back", 0.0, Some(&reason), figures);
    }

    fn record(
        &self,
        registry: &Registry,
        state: &str,
        share: f64,
        reason: Option<&str>,
        figures: &Figures,
    ) {
        let figures = serde_json::to_string(figures).ok();
        if let Err(e) =
            registry
                .store()
                .update_deployment(self.id, state, share, reason, figures.as_deref())
        {
            tracing::warn!(function = %self.function, error = %e, "cannot record the rollout's step");
        }
    }
}

/// Rolls back what a stop interrupted: its window cannot be judged.
pub fn recover(registry: &Registry) {
    let running = match registry.store().running_deployments() {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the rollouts under way");
            return;
        }
    };
    for row in running {
        let split = vec![row.from_version.clone(), row.to_version.clone()];
        let (state, share, reason) = match registry.live_versions(&row.function) {
            // Live is as the rollout left it mid-window: back to the old one.
            Some(live) if live == split => {
                let reason = "the gateway stopped during the rollout, so its window cannot be judged: rolled back at the next start";
                match registry.point(&row.function, &row.from_version) {
                    Ok(_) => ("rolled_back", 0.0, reason.to_owned()),
                    Err(e) => (
                        "rolled_back",
                        0.0,
                        format!("{reason}; moving live back failed: {e} (move it with `wasmgate alias`)"),
                    ),
                }
            }
            // Promoted, and stopped before recording it.
            Some(live) if live == [row.to_version.clone()] => (
                "succeeded",
                1.0,
                "the new version took every event before the stop".to_owned(),
            ),
            Some(_) => (
                "superseded",
                row.share,
                "at the next start live was neither the rollout's split nor its end (the config file names another module?); left as the start made it".to_owned(),
            ),
            None => (
                "superseded",
                row.share,
                "the function is no longer configured".to_owned(),
            ),
        };
        tracing::warn!(function = %row.function, from = %row.from_version, to = %row.to_version, state, "rollout interrupted by a stop: {reason}");
        let _ = registry
            .store()
            .update_deployment(row.id, state, share, Some(&reason), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_read_as_ours_and_as_codedeploy_names_them() {
        let canary = Strategy::Canary {
            percent: 10,
            window: Duration::from_secs(300),
        };
        assert_eq!(Strategy::parse("canary10-5m"), Ok(canary));
        assert_eq!(Strategy::parse("Canary10Percent5Minutes"), Ok(canary));
        let linear = Strategy::Linear {
            percent: 10,
            every: Duration::from_secs(60),
        };
        assert_eq!(Strategy::parse("linear10-every-1m"), Ok(linear));
        assert_eq!(Strategy::parse("Linear10PercentEvery1Minute"), Ok(linear));
        assert_eq!(Strategy::parse("AllAtOnce"), Ok(Strategy::AllAtOnce));
        assert_eq!(Strategy::parse("all-at-once"), Ok(Strategy::AllAtOnce));
        assert_eq!(
            Strategy::parse("canary50-30s"),
            Ok(Strategy::Canary {
                percent: 50,
                window: Duration::from_secs(30)
            })
        );
        for bad in [
            "canary",
            "canary0-5m",
            "canary100-5m",
            "canary10-5h",
            "linear10-5m",
            "blue-green",
            "canary10-0s",
            "canary10-5é",
            "canary10-é",
            "Canary10Percent5Minutesé",
        ] {
            assert!(Strategy::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(canary.name(), "canary10-5m");
        assert_eq!(Strategy::parse(&linear.name()), Ok(linear));
    }

    #[test]
    fn a_linear_rollout_steps_up_to_all() {
        let steps = Strategy::parse("linear30-every-1m").unwrap().steps();
        let shares: Vec<f64> = steps.iter().map(|(s, _)| *s).collect();
        assert_eq!(shares, [0.3, 0.6, 0.9]);
        assert!(Strategy::AllAtOnce.steps().is_empty());
    }

    #[test]
    fn a_rollback_needs_a_rate_over_the_bound_and_the_old_versions() {
        let alarms = Alarms::default();
        let figures = |new_ok, new_failed, old_ok, old_failed| Figures {
            new_ok,
            new_failed,
            old_ok,
            old_failed,
            new_p99_us: None,
            new_step_runs: 0,
            new_dead_letters: 0,
            old_dead_letters: 0,
        };
        assert!(judge(&figures(0, 0, 100, 0), &alarms).is_none());
        // Too few runs to call it a rate.
        assert!(judge(&figures(0, 4, 100, 0), &alarms).is_none());
        let reason = judge(&figures(8, 2, 100, 0), &alarms).expect("rolls back");
        assert!(reason.contains("2 of 10"), "{reason}");
        // As bad as the old one: the traffic, not the version.
        assert!(judge(&figures(8, 2, 80, 20), &alarms).is_none());
        assert!(judge(&figures(99, 1, 100, 0), &alarms).is_none());
        let slow = Alarms {
            max_p99: Some(Duration::from_millis(10)),
            ..alarms.clone()
        };
        let mut f = figures(10, 0, 10, 0);
        f.new_p99_us = Some(40_000);
        assert!(judge(&f, &slow).is_none(), "too few runs in the step");
        f.new_step_runs = 5;
        let mut dead = figures(100, 1, 100, 0);
        dead.new_dead_letters = 1;
        let reason = judge(&dead, &alarms).expect("dead-lettering");
        assert!(reason.contains("dead-lettering"), "{reason}");
        // Poison messages both versions dead-letter are not the version's.
        dead.old_dead_letters = 2;
        assert!(judge(&dead, &alarms).is_none());
        assert!(judge(&f, &slow).expect("too slow").contains("p99"));
    }
}
