//! The simulated fleet: devices as small state machines that turn into
//! telemetry messages. Pure: no clock, no I/O; the caller passes the
//! timestamp, so a seed and a sequence of timestamps give the same messages
//! every time.
//!
//! The payloads are the ones the example functions parse
//! (`functions/examples/{vending,robot}-telemetry`); the optional `seq` field
//! is one they ignore, like any unknown field (serde-json-core skips them).

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// A small, fast, seedable generator (SplitMix64). Not for secrets; plenty for
/// wobbling a temperature.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n`; `n` must not be zero.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Roughly normal, mean 0, standard deviation `sigma` (sum of three uniforms).
    pub fn noise(&mut self, sigma: f64) -> f64 {
        (self.unit() + self.unit() + self.unit() - 1.5) * 2.0 * sigma
    }
}

/// What kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vending,
    Robot,
}

/// How many of each kind, as weights: `vending=2,robot=1` makes two vending
/// machines for every robot, interleaved (`vm-1`, `vm-2`, `r-1`, `vm-3`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub vending: u32,
    pub robot: u32,
}

impl Mix {
    /// Two thirds vending machines, one third robots.
    pub const DEFAULT: Mix = Mix {
        vending: 2,
        robot: 1,
    };

    /// The kind of the `index`th device (0-based).
    pub fn kind_of(&self, index: u32) -> Kind {
        let cycle = u64::from(self.vending) + u64::from(self.robot);
        if u64::from(index) % cycle < u64::from(self.vending) {
            Kind::Vending
        } else {
            Kind::Robot
        }
    }
}

impl Default for Mix {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vending={},robot={}", self.vending, self.robot)
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `vending=2,robot=1`; a kind left out counts zero.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = Mix {
            vending: 0,
            robot: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("expected KIND=WEIGHT, got {part:?}"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("the weight of {kind:?} is not a whole number: {weight:?}"))?;
            match kind.trim() {
                "vending" => mix.vending = weight,
                "robot" => mix.robot = weight,
                other => {
                    return Err(format!(
                        "unknown device kind {other:?} (the kinds are vending, robot)"
                    ))
                }
            }
        }
        if mix.vending == 0 && mix.robot == 0 {
            return Err("the mix has no devices: give vending or robot a weight above 0".into());
        }
        Ok(mix)
    }
}

/// The fleet to simulate.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// How many devices.
    pub devices: u32,
    /// Which kinds, in what proportion.
    pub mix: Mix,
    /// Same seed, same fleet, same messages.
    pub seed: u64,
    /// Stamp every message with `"seq": n`, counting from 1 per device.
    pub seq: bool,
    /// Stamp every message with `"sent_us"`, the send time in microseconds
    /// since the Unix epoch (see [`Fleet::next_message_us`]), and keep each
    /// device's `ts` strictly increasing, so that device and `ts` name one
    /// message even at over 1,000 messages a second per device: what
    /// `wasmgate bench` matches outputs by when a function echoes only `ts`.
    pub sent_us: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            devices: 10,
            mix: Mix::DEFAULT,
            seed: 1,
            seq: true,
            sent_us: false,
        }
    }
}

/// One telemetry message, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Index of the device in the fleet.
    pub device: usize,
    /// The device's count of messages, from 1 (whether or not it is in the payload).
    pub seq: u64,
    /// The `ts` in the payload, milliseconds since the Unix epoch.
    pub ts: u64,
    pub topic: String,
    /// JSON.
    pub payload: Vec<u8>,
}

/// Devices that publish in turn.
#[derive(Debug, Clone)]
pub struct Fleet {
    devices: Vec<Device>,
    next: usize,
    seq: bool,
    sent_us: bool,
}

impl Fleet {
    /// A fleet of `config.devices` devices; at least one.
    pub fn new(config: &FleetConfig) -> Self {
        let mut vending = 0;
        let mut robots = 0;
        let devices = (0..config.devices.max(1))
            .map(|index| {
                // One generator per device, so a device's messages do not
                // depend on how many others there are or in which order they run.
                let mut rng =
                    Rng::new(config.seed ^ u64::from(index).wrapping_mul(0xA24B_AED4_963E_E407));
                rng.next_u64();
                let state = match config.mix.kind_of(index) {
                    Kind::Vending => {
                        vending += 1;
                        State::Vending(Vending::new(&mut rng))
                    }
                    Kind::Robot => {
                        robots += 1;
                        State::Robot(Robot::new(&mut rng))
                    }
                };
                let id = match state {
                    State::Vending(_) => format!("vm-{vending}"),
                    State::Robot(_) => format!("r-{robots}"),
                };
                let topic = match state {
                    State::Vending(_) => format!("vending/{id}/telemetry"),
                    State::Robot(_) => format!("robots/{id}/telemetry"),
                };
                Device {
                    id,
                    topic,
                    rng,
                    seq: 0,
                    last_ts: 0,
                    state,
                }
            })
            .collect();
        Self {
            devices,
            next: 0,
            seq: config.seq,
            sent_us: config.sent_us,
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The id of a device: `vm-3`, `r-1`.
    pub fn id(&self, device: usize) -> &str {
        &self.devices[device].id
    }

    pub fn kind(&self, device: usize) -> Kind {
        match self.devices[device].state {
            State::Vending(_) => Kind::Vending,
            State::Robot(_) => Kind::Robot,
        }
    }

    /// The next device in turn moves on one step and reports, stamped `now_ms`.
    pub fn next_message(&mut self, now_ms: u64) -> Message {
        let device = self.next;
        self.next = (self.next + 1) % self.devices.len();
        self.step(device, now_ms)
    }

    /// The next device in turn reports, stamped `now_us` (microseconds since
    /// the Unix epoch): `ts` in milliseconds, and `sent_us` if the fleet was
    /// configured with [`FleetConfig::sent_us`].
    pub fn next_message_us(&mut self, now_us: u64) -> Message {
        let device = self.next;
        self.next = (self.next + 1) % self.devices.len();
        self.step_us(device, now_us)
    }

    /// Device `device` moves on one step and reports, stamped `now_ms`.
    pub fn step(&mut self, device: usize, now_ms: u64) -> Message {
        self.step_us(device, now_ms.saturating_mul(1000))
    }

    /// Device `device` moves on one step and reports, stamped `now_us`.
    pub fn step_us(&mut self, device: usize, now_us: u64) -> Message {
        let stamp_seq = self.seq;
        let sent_us = self.sent_us.then_some(now_us);
        let d = &mut self.devices[device];
        d.seq += 1;
        let mut ts = now_us / 1000;
        if sent_us.is_some() {
            ts = ts.max(d.last_ts + 1);
        }
        d.last_ts = ts;
        let stamps = Stamps {
            seq: stamp_seq.then_some(d.seq),
            ts,
            sent_us,
        };
        let payload = match &mut d.state {
            State::Vending(vm) => vm.step(&mut d.rng).to_json(&d.id, stamps),
            State::Robot(robot) => robot.step(&mut d.rng).to_json(&d.id, stamps),
        };
        Message {
            device,
            seq: d.seq,
            ts,
            topic: d.topic.clone(),
            payload,
        }
    }
}

#[derive(Debug, Clone)]
struct Device {
    id: String,
    topic: String,
    rng: Rng,
    /// Messages sent so far.
    seq: u64,
    /// The `ts` of the last message.
    last_ts: u64,
    state: State,
}

/// What identifies a message in its payload.
#[derive(Debug, Clone, Copy)]
struct Stamps {
    seq: Option<u64>,
    ts: u64,
    sent_us: Option<u64>,
}

#[derive(Debug, Clone)]
enum State {
    Vending(Vending),
    Robot(Robot),
}

// ---- vending machines ----

/// Slots with their prices in cents.
const SLOTS: [(&str, u32); 6] = [
    ("A1", 150),
    ("A2", 150),
    ("A3", 200),
    ("B1", 250),
    ("B2", 120),
    ("B3", 300),
];
const SLOT_CAPACITY: u32 = 10;
/// Where the thermostat holds the cabinet.
const SET_POINT_C: f64 = 4.5;
/// Where a failed compressor lets it drift: warm enough to alert (over 8).
const FAULT_TEMP_C: f64 = 11.0;
/// Per message: a compressor fault starts.
const P_FAULT: f64 = 0.002;
/// Per message: a sale.
const P_SALE: f64 = 0.35;
/// Per message: the operator comes to restock; likelier once a slot is empty.
const P_RESTOCK: f64 = 0.003;
const P_RESTOCK_EMPTY_SLOT: f64 = 0.03;

#[derive(Debug, Clone)]
struct Vending {
    temp_c: f64,
    stock: [u32; SLOTS.len()],
    /// Messages left in the current compressor fault.
    fault_left: u32,
    /// Messages left with the door open.
    door_left: u32,
}

/// What one vending machine message reports.
#[derive(Debug, Clone, Copy)]
struct VendingReading {
    temp_c: f64,
    door_open: bool,
    stock: [u32; SLOTS.len()],
    /// The slot sold from, if any.
    sale: Option<usize>,
}

impl Vending {
    fn new(rng: &mut Rng) -> Self {
        let mut stock = [0; SLOTS.len()];
        for count in &mut stock {
            *count = 3 + rng.below(u64::from(SLOT_CAPACITY) - 2) as u32;
        }
        Self {
            temp_c: SET_POINT_C + rng.noise(0.3),
            stock,
            fault_left: 0,
            door_left: 0,
        }
    }

    fn step(&mut self, rng: &mut Rng) -> VendingReading {
        if self.fault_left > 0 {
            self.fault_left -= 1;
        } else if rng.chance(P_FAULT) {
            self.fault_left = 30 + rng.below(60) as u32;
        }

        let p_restock = if self.stock.contains(&0) {
            P_RESTOCK_EMPTY_SLOT
        } else {
            P_RESTOCK
        };
        if self.door_left == 0 && rng.chance(p_restock) {
            self.stock = [SLOT_CAPACITY; SLOTS.len()];
            self.door_left = 1 + rng.below(3) as u32;
        }
        let door_open = self.door_left > 0;
        self.door_left = self.door_left.saturating_sub(1);

        // The cabinet relaxes toward its target; an open door lets warm air in.
        let target = if self.fault_left > 0 {
            FAULT_TEMP_C
        } else {
            SET_POINT_C
        };
        self.temp_c += 0.15 * (target - self.temp_c) + rng.noise(0.1);
        if door_open {
            self.temp_c += 0.6;
        }
        self.temp_c = self.temp_c.clamp(-5.0, 30.0);

        // Nobody buys while the operator has the door open.
        let mut sale = None;
        if !door_open && rng.chance(P_SALE) {
            let stocked: Vec<usize> = (0..SLOTS.len()).filter(|&i| self.stock[i] > 0).collect();
            if !stocked.is_empty() {
                let slot = stocked[rng.below(stocked.len() as u64) as usize];
                self.stock[slot] -= 1;
                sale = Some(slot);
            }
        }
        VendingReading {
            temp_c: self.temp_c,
            door_open,
            stock: self.stock,
            sale,
        }
    }
}

#[derive(Serialize)]
struct VendingJson<'a> {
    machine: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_us: Option<u64>,
    temp_c: f64,
    door_open: bool,
    stock: Vec<SlotJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sale: Option<SaleJson>,
}

#[derive(Serialize)]
struct SlotJson {
    slot: &'static str,
    count: u32,
}

#[derive(Serialize)]
struct SaleJson {
    slot: &'static str,
    price_cents: u32,
}

impl VendingReading {
    fn to_json(self, machine: &str, stamps: Stamps) -> Vec<u8> {
        let json = VendingJson {
            machine,
            seq: stamps.seq,
            ts: stamps.ts,
            sent_us: stamps.sent_us,
            temp_c: round_to(self.temp_c, 10.0),
            door_open: self.door_open,
            stock: SLOTS
                .iter()
                .zip(self.stock)
                .map(|(&(slot, _), count)| SlotJson { slot, count })
                .collect(),
            sale: self.sale.map(|i| SaleJson {
                slot: SLOTS[i].0,
                price_cents: SLOTS[i].1,
            }),
        };
        serde_json::to_vec(&json).expect("telemetry serializes")
    }
}

// ---- robots ----

/// The warehouse floor, in metres.
const FLOOR_W: f64 = 40.0;
const FLOOR_H: f64 = 25.0;
/// Where robots charge.
const DOCK: (f64, f64) = (1.0, 1.0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    Idle,
    Moving,
    /// Driving to the dock; reported as `moving`.
    Returning,
    Charging,
}

#[derive(Debug, Clone)]
struct Robot {
    x: f64,
    y: f64,
    heading: f64,
    battery_pct: f64,
    activity: Activity,
    /// Below this the robot heads for the dock; drawn anew each trip, so some
    /// trips dip under the 20 % alert line and some do not.
    return_at_pct: f64,
}

#[derive(Debug, Clone, Copy)]
struct RobotReading {
    x: f64,
    y: f64,
    battery_pct: f64,
    state: &'static str,
}

impl Robot {
    fn new(rng: &mut Rng) -> Self {
        Self {
            x: rng.range(0.0, FLOOR_W),
            y: rng.range(0.0, FLOOR_H),
            heading: rng.range(0.0, std::f64::consts::TAU),
            battery_pct: rng.range(40.0, 100.0),
            activity: Activity::Idle,
            return_at_pct: rng.range(15.0, 28.0),
        }
    }

    fn step(&mut self, rng: &mut Rng) -> RobotReading {
        // The message reports what the robot did during this step, so a
        // `moving` message always drains and a `charging` one always charges.
        let did = self.activity;
        match self.activity {
            Activity::Idle => {
                self.drain(0.05);
                if self.battery_pct < self.return_at_pct {
                    self.activity = Activity::Returning;
                } else if rng.chance(0.25) {
                    self.activity = Activity::Moving;
                }
            }
            Activity::Moving => {
                self.heading += rng.noise(0.5);
                let stride = rng.range(0.4, 0.8);
                self.x += stride * self.heading.cos();
                self.y += stride * self.heading.sin();
                self.bounce();
                self.drain(rng.range(0.3, 0.7));
                if self.battery_pct < self.return_at_pct {
                    self.activity = Activity::Returning;
                } else if rng.chance(0.04) {
                    self.activity = Activity::Idle;
                }
            }
            Activity::Returning => {
                let (dx, dy) = (DOCK.0 - self.x, DOCK.1 - self.y);
                let distance = dx.hypot(dy);
                let stride = 1.0_f64.min(distance);
                if distance > 0.0 {
                    self.x += dx / distance * stride;
                    self.y += dy / distance * stride;
                }
                self.drain(0.3);
                if distance <= 1.0 {
                    self.activity = Activity::Charging;
                }
            }
            Activity::Charging => {
                self.battery_pct = (self.battery_pct + rng.range(2.0, 3.5)).min(100.0);
                if self.battery_pct >= 99.5 {
                    self.activity = Activity::Idle;
                    self.return_at_pct = rng.range(15.0, 28.0);
                }
            }
        }
        RobotReading {
            x: self.x,
            y: self.y,
            battery_pct: self.battery_pct,
            state: match did {
                Activity::Idle => "idle",
                Activity::Moving | Activity::Returning => "moving",
                Activity::Charging => "charging",
            },
        }
    }

    fn drain(&mut self, pct: f64) {
        self.battery_pct = (self.battery_pct - pct).max(0.0);
    }

    /// Off the floor? Reflect back onto it and turn around.
    fn bounce(&mut self) {
        if !(0.0..=FLOOR_W).contains(&self.x) {
            self.x = self.x.clamp(0.0, FLOOR_W);
            self.heading = std::f64::consts::PI - self.heading;
        }
        if !(0.0..=FLOOR_H).contains(&self.y) {
            self.y = self.y.clamp(0.0, FLOOR_H);
            self.heading = -self.heading;
        }
    }
}

#[derive(Serialize)]
struct RobotJson<'a> {
    robot: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_us: Option<u64>,
    x: f64,
    y: f64,
    battery_pct: f64,
    state: &'static str,
}

impl RobotReading {
    fn to_json(self, robot: &str, stamps: Stamps) -> Vec<u8> {
        let json = RobotJson {
            robot,
            seq: stamps.seq,
            ts: stamps.ts,
            sent_us: stamps.sent_us,
            x: round_to(self.x, 100.0),
            y: round_to(self.y, 100.0),
            battery_pct: round_to(self.battery_pct, 10.0),
            state: self.state,
        };
        serde_json::to_vec(&json).expect("telemetry serializes")
    }
}

/// `round_to(6.8312, 10.0)` is `6.8`: short numbers, like a device would send.
fn round_to(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const TS: u64 = 1_764_160_000_000;

    fn fleet(devices: u32, seed: u64) -> Fleet {
        Fleet::new(&FleetConfig {
            devices,
            seed,
            ..FleetConfig::default()
        })
    }

    /// `steps` messages from device `device`, parsed.
    fn run(fleet: &mut Fleet, device: usize, steps: usize) -> Vec<Value> {
        (0..steps)
            .map(|i| {
                let msg = fleet.step(device, TS + i as u64 * 1000);
                serde_json::from_slice(&msg.payload).expect("valid JSON")
            })
            .collect()
    }

    fn num(v: &Value, field: &str) -> f64 {
        v[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} is a number in {v}"))
    }

    fn first_device(fleet: &Fleet, kind: Kind) -> usize {
        (0..fleet.len())
            .find(|&i| fleet.kind(i) == kind)
            .expect("a device of that kind")
    }

    #[test]
    fn the_same_seed_gives_the_same_messages() {
        let (mut a, mut b) = (fleet(7, 42), fleet(7, 42));
        for i in 0..500 {
            assert_eq!(a.next_message(TS + i), b.next_message(TS + i));
        }
    }

    #[test]
    fn another_seed_gives_other_messages() {
        let (mut a, mut b) = (fleet(7, 1), fleet(7, 2));
        let differ = (0..50).any(|i| a.next_message(TS + i) != b.next_message(TS + i));
        assert!(differ);
    }

    #[test]
    fn a_device_behaves_the_same_whatever_the_size_of_the_fleet() {
        let (mut small, mut large) = (fleet(3, 9), fleet(300, 9));
        assert_eq!(run(&mut small, 0, 200), run(&mut large, 0, 200));
    }

    #[test]
    fn the_default_mix_is_two_vending_machines_per_robot_with_their_own_numbering() {
        let fleet = fleet(10, 1);
        let ids: Vec<&str> = (0..fleet.len()).map(|i| fleet.id(i)).collect();
        assert_eq!(
            ids,
            ["vm-1", "vm-2", "r-1", "vm-3", "vm-4", "r-2", "vm-5", "vm-6", "r-3", "vm-7"]
        );
    }

    #[test]
    fn mixes_parse_and_reject_nonsense() {
        assert_eq!("vending=2,robot=1".parse(), Ok(Mix::DEFAULT));
        assert_eq!(
            "robot=1".parse(),
            Ok(Mix {
                vending: 0,
                robot: 1
            })
        );
        assert_eq!(
            "vending=3, robot=0".parse::<Mix>().unwrap().to_string(),
            "vending=3,robot=0"
        );
        assert!("drone=1"
            .parse::<Mix>()
            .unwrap_err()
            .contains("unknown device kind"));
        assert!("vending=x".parse::<Mix>().is_err());
        assert!("vending".parse::<Mix>().is_err());
        assert!("vending=0,robot=0".parse::<Mix>().is_err());
        let robots = Fleet::new(&FleetConfig {
            devices: 4,
            mix: "robot=1".parse().unwrap(),
            ..FleetConfig::default()
        });
        assert!((0..4).all(|i| robots.kind(i) == Kind::Robot));
    }

    #[test]
    fn devices_take_turns() {
        let mut fleet = fleet(3, 1);
        let order: Vec<usize> = (0..7).map(|i| fleet.next_message(TS + i).device).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn vending_messages_have_the_fields_the_example_function_reads() {
        let mut fleet = fleet(3, 1);
        let msg = fleet.step(0, TS);
        assert_eq!(msg.topic, "vending/vm-1/telemetry");
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["machine"], "vm-1");
        assert_eq!(v["ts"], TS);
        assert_eq!(v["seq"], 1);
        assert!(v["temp_c"].is_f64());
        assert!(v["door_open"].is_boolean());
        let stock = v["stock"].as_array().unwrap();
        assert_eq!(stock.len(), SLOTS.len());
        assert_eq!(stock[0]["slot"], "A1");
        assert!(stock[0]["count"].is_u64());
        // `sale` appears on some messages only, with a slot and a price.
        let sales: Vec<Value> = run(&mut fleet, 0, 100)
            .into_iter()
            .filter_map(|v| v.get("sale").cloned())
            .collect();
        assert!((10..90).contains(&sales.len()), "{} sales", sales.len());
        assert!(sales[0]["slot"].is_string() && sales[0]["price_cents"].is_u64());
    }

    #[test]
    fn robot_messages_have_the_fields_the_example_function_reads() {
        let mut fleet = fleet(3, 1);
        let msg = fleet.step(2, TS);
        assert_eq!(msg.topic, "robots/r-1/telemetry");
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            ["battery_pct", "robot", "seq", "state", "ts", "x", "y"]
        );
        assert_eq!(v["robot"], "r-1");
    }

    #[test]
    fn bench_stamps_carry_the_send_time_and_keep_ts_unique_per_device() {
        let mut stamped = Fleet::new(&FleetConfig {
            devices: 2,
            sent_us: true,
            ..FleetConfig::default()
        });
        // Four messages per device within one millisecond.
        let now_us = TS * 1000 + 250;
        let msgs: Vec<Message> = (0..8)
            .map(|i| stamped.next_message_us(now_us + i))
            .collect();
        for (i, msg) in msgs.iter().enumerate() {
            let v: Value = serde_json::from_slice(&msg.payload).unwrap();
            assert_eq!(v["sent_us"], now_us + i as u64);
            assert_eq!(
                (v["ts"].as_u64(), v["seq"].as_u64()),
                (Some(msg.ts), Some(msg.seq))
            );
        }
        let device_ts: Vec<u64> = msgs
            .iter()
            .filter(|m| m.device == 0)
            .map(|m| m.ts)
            .collect();
        assert_eq!(device_ts, [TS, TS + 1, TS + 2, TS + 3]);
        // Without the option: no sent_us, and ts is the clock.
        let msg = fleet(2, 1).next_message_us(now_us);
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!((v.get("sent_us"), msg.ts), (None, TS));
    }

    #[test]
    fn sequence_numbers_count_per_device_and_can_be_left_out() {
        let mut fleet = fleet(2, 1);
        let seqs: Vec<(usize, u64)> = (0..6)
            .map(|i| {
                let msg = fleet.next_message(TS + i);
                let v: Value = serde_json::from_slice(&msg.payload).unwrap();
                (msg.device, v["seq"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(seqs, [(0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3)]);

        let mut plain = Fleet::new(&FleetConfig {
            seq: false,
            ..FleetConfig::default()
        });
        let v: Value = serde_json::from_slice(&plain.next_message(TS).payload).unwrap();
        assert!(v.get("seq").is_none());
    }

    #[test]
    fn a_vending_machine_holds_its_temperature_but_its_compressor_sometimes_fails() {
        let mut fleet = fleet(1, 5);
        let temps: Vec<f64> = run(&mut fleet, 0, 10_000)
            .iter()
            .map(|v| num(v, "temp_c"))
            .collect();
        let normal = temps.iter().filter(|t| (2.5..=7.0).contains(*t)).count();
        assert!(
            normal > temps.len() * 3 / 4,
            "only {normal} of {} normal",
            temps.len()
        );
        let mean: f64 = temps.iter().sum::<f64>() / temps.len() as f64;
        assert!((4.0..6.0).contains(&mean), "mean {mean}");
        // Excursions: separate runs above 8 °C, not one long one.
        let excursions = temps
            .windows(2)
            .filter(|w| w[0] <= 8.0 && w[1] > 8.0)
            .count();
        assert!(excursions >= 3, "{excursions} excursions");
        assert!(temps.iter().all(|t| (-5.0..=30.0).contains(t)));
    }

    #[test]
    fn stock_goes_down_with_sales_never_below_zero_and_gets_restocked() {
        let mut fleet = fleet(1, 3);
        let readings = run(&mut fleet, 0, 5_000);
        let stock = |v: &Value| -> Vec<u64> {
            v["stock"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["count"].as_u64().unwrap())
                .collect()
        };
        let mut restocks = 0;
        for pair in readings.windows(2) {
            let (before, after) = (stock(&pair[0]), stock(&pair[1]));
            assert!(after.iter().all(|&c| c <= u64::from(SLOT_CAPACITY)));
            if let Some(sale) = pair[1].get("sale") {
                let slot = SLOTS.iter().position(|s| s.0 == sale["slot"]).unwrap();
                assert_eq!(after[slot] + 1, before[slot], "a sale takes one item");
                assert_eq!(sale["price_cents"], SLOTS[slot].1);
            } else if after != before {
                assert!(
                    pair[1]["door_open"] == true,
                    "only a restock adds stock, with the door open"
                );
                assert!(after.iter().all(|&c| c == u64::from(SLOT_CAPACITY)));
                restocks += 1;
            }
        }
        assert!(restocks >= 5, "{restocks} restocks");
        // Slots run empty sometimes: the example function's low-stock alert fires.
        assert!(readings.iter().any(|v| stock(v).contains(&0)));
    }

    #[test]
    fn robots_wander_drain_their_battery_and_recharge() {
        let mut fleet = fleet(3, 11);
        let robot = first_device(&fleet, Kind::Robot);
        let readings = run(&mut fleet, robot, 5_000);
        for v in &readings {
            let battery = num(v, "battery_pct");
            assert!((0.0..=100.0).contains(&battery), "battery {battery}");
            assert!(
                (0.0..=FLOOR_W).contains(&num(v, "x")) && (0.0..=FLOOR_H).contains(&num(v, "y"))
            );
        }
        for pair in readings.windows(2) {
            let (b0, b1) = (num(&pair[0], "battery_pct"), num(&pair[1], "battery_pct"));
            match pair[1]["state"].as_str().unwrap() {
                "moving" => assert!(b1 < b0 || b1 == 0.0, "moving drains: {b0} -> {b1}"),
                "charging" => assert!(b1 > b0, "charging charges: {b0} -> {b1}"),
                "idle" => {}
                other => panic!("unknown state {other}"),
            }
        }
        let count = |state: &str| readings.iter().filter(|v| v["state"] == state).count();
        assert!(count("moving") > 1000 && count("idle") > 100 && count("charging") > 100);
        // Some trips dip under the 20 % alert line, and the robot walks around.
        assert!(readings.iter().any(|v| num(v, "battery_pct") < 20.0));
        let xs = readings.iter().map(|v| num(v, "x"));
        let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        assert!(hi - lo > FLOOR_W / 2.0, "x only spans {lo}..{hi}");
    }

    #[test]
    fn numbers_are_short_like_a_device_would_send() {
        let mut fleet = fleet(3, 1);
        for i in 0..30 {
            let msg = fleet.next_message(TS + i);
            let v: Value = serde_json::from_slice(&msg.payload).unwrap();
            for field in ["temp_c", "x", "y", "battery_pct"] {
                if let Some(n) = v.get(field) {
                    let decimals = n.to_string().split_once('.').map_or(0, |(_, d)| d.len());
                    assert!(decimals <= 2, "{field} is {n}");
                }
            }
            assert!(msg.payload.len() < 400, "{v}");
        }
    }
}
