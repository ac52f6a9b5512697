//! A school network in a box: a network namespace joined to this host by a link this process
//! emulates in user space, because the kernel here has no netem. Two TUN devices, one in the
//! namespace and one on the host, carry every IP packet between them through [`Link`]: a one-way
//! delay with jitter (in order, as a Wi-Fi access point queues), a rate with a bounded queue
//! (tail drop, like a full access point), bursty loss (Gilbert–Elliott), and optionally every
//! UDP datagram dropped (a firewall). The tests and the bench run students in such namespaces
//! (`ip netns exec`), the servers on the host address.
//!
//! The namespace and devices are removed when the process ends (the devices go with their file
//! descriptors; the namespace is deleted on SIGTERM, SIGINT or stdin closing, and a stale one
//! of the same name is deleted at start).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One direction's impairments.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkProfile {
    /// One-way delay and its jitter (uniform in ±jitter), ms.
    pub delay_ms: f64,
    pub jitter_ms: f64,
    /// Bits per second; 0 is unlimited.
    pub rate_bps: u64,
    /// Most queueing delay the rate limiter holds before it drops (an access point's buffer).
    pub queue_ms: f64,
    /// Gilbert–Elliott: P(good → bad) and P(bad → good) per packet, loss in each state.
    pub p_bad: f64,
    pub p_good: f64,
    pub loss_bad: f64,
    pub loss_good: f64,
    pub drop_udp: bool,
}

impl LinkProfile {
    pub const CLEAN: LinkProfile = LinkProfile {
        delay_ms: 0.0,
        jitter_ms: 0.0,
        rate_bps: 0,
        queue_ms: 200.0,
        p_bad: 0.0,
        p_good: 1.0,
        loss_bad: 0.0,
        loss_good: 0.0,
        drop_udp: false,
    };

    /// The named profiles (one-way figures; a round trip is twice the delay):
    /// good Wi-Fi 20 ± 5 ms RTT, 0.5 % loss, 20 Mbit/s; busy Wi-Fi 40 ± 20 ms, 3 % loss in
    /// bursts, 4 Mbit/s; poor 80 ± 40 ms, 8 %, 2 Mbit/s; capped: 1.5 Mbit/s, 20 ms, no loss; udp-blocked: good Wi-Fi without UDP.
    pub fn named(name: &str) -> Option<LinkProfile> {
        let wifi = |rtt: f64, jit: f64, mbit: f64, p_bad: f64, loss_bad: f64, loss_good: f64| {
            LinkProfile {
                delay_ms: rtt / 2.0,
                jitter_ms: jit / 2.0,
                rate_bps: (mbit * 1e6) as u64,
                queue_ms: 200.0,
                p_bad,
                p_good: 0.25,
                loss_bad,
                loss_good,
                drop_udp: false,
            }
        };
        Some(match name {
            "clean" => Self::CLEAN,
            "good" => wifi(20.0, 5.0, 20.0, 0.002, 0.6, 0.001),
            "busy" => wifi(40.0, 20.0, 4.0, 0.01, 0.75, 0.001),
            "poor" => wifi(80.0, 40.0, 2.0, 0.03, 0.7, 0.005),
            // A link with room for the bottom of a ladder only (the ABR tests): 1.5 Mbit/s,
            // 20 ms round trip, no loss.
            "capped" => wifi(20.0, 4.0, 1.5, 0.0, 0.0, 0.0),
            "udp-blocked" => LinkProfile {
                drop_udp: true,
                ..wifi(20.0, 5.0, 20.0, 0.002, 0.6, 0.001)
            },
            _ => return None,
        })
    }

    /// The long-run loss rate of the Gilbert–Elliott chain.
    pub fn mean_loss(&self) -> f64 {
        let pb = self.p_bad / (self.p_bad + self.p_good);
        pb * self.loss_bad + (1.0 - pb) * self.loss_good
    }
}

/// A small deterministic generator (xorshift64*): the same seed, the same losses.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the link decided for a packet.
#[derive(Debug, PartialEq)]
pub enum Fate {
    /// Delivered at this instant.
    At(Instant),
    Lost,
    QueueFull,
    Blocked,
}

/// One direction of the emulated link: pure, fed packets and times.
pub struct Link {
    p: LinkProfile,
    rng: Rng,
    bad: bool,
    /// When the rate limiter has sent everything queued so far.
    free_at: Instant,
    /// The last delivery time: deliveries stay in order.
    last: Instant,
}

impl Link {
    pub fn new(p: LinkProfile, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            p,
            rng: Rng::new(seed),
            bad: false,
            free_at: now,
            last: now,
        }
    }

    pub fn packet(&mut self, now: Instant, len: usize, udp: bool) -> Fate {
        if udp && self.p.drop_udp {
            return Fate::Blocked;
        }
        // The loss chain moves once per packet.
        let flip = self.rng.unit();
        if self.bad && flip < self.p.p_good {
            self.bad = false;
        } else if !self.bad && flip < self.p.p_bad {
            self.bad = true;
        }
        let loss = if self.bad {
            self.p.loss_bad
        } else {
            self.p.loss_good
        };
        if self.rng.unit() < loss {
            return Fate::Lost;
        }
        let mut sent = now;
        if self.p.rate_bps > 0 {
            let start = self.free_at.max(now);
            if start.duration_since(now) > Duration::from_secs_f64(self.p.queue_ms / 1000.0) {
                return Fate::QueueFull;
            }
            sent = start + Duration::from_secs_f64(len as f64 * 8.0 / self.p.rate_bps as f64);
            self.free_at = sent;
        }
        let jitter = (self.rng.unit() * 2.0 - 1.0) * self.p.jitter_ms;
        let delay = (self.p.delay_ms + jitter).max(0.0);
        let at = (sent + Duration::from_secs_f64(delay / 1000.0)).max(self.last);
        self.last = at;
        Fate::At(at)
    }
}

#[derive(Default, Serialize)]
pub struct DirStats {
    pub packets: u64,
    pub delivered: u64,
    pub lost: u64,
    pub queue_full: u64,
    pub blocked: u64,
}

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    delivered: AtomicU64,
    lost: AtomicU64,
    queue_full: AtomicU64,
    blocked: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirStats {
        DirStats {
            packets: self.packets.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
            blocked: self.blocked.load(Ordering::Relaxed),
        }
    }
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A TUN device named `name` (IFF_TUN | IFF_NO_PI) in the calling thread's namespace.
fn open_tun(name: &str) -> anyhow::Result<File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    anyhow::ensure!(
        fd >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut req = [0u8; 40];
    let n = name.len().min(15);
    req[..n].copy_from_slice(&name.as_bytes()[..n]);
    let flags: libc::c_short = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF with an ifreq-sized buffer.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()) };
    anyhow::ensure!(
        r == 0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    Ok(file)
}

/// Runs `f` in the namespace `ns` (on this thread), then returns to the original one.
fn in_namespace<T>(ns: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let own = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: setns with namespace descriptors.
    anyhow::ensure!(
        unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
        "setns {ns}: {}",
        std::io::Error::last_os_error()
    );
    let r = f();
    let back = unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) };
    anyhow::ensure!(back == 0, "setns back: {}", std::io::Error::last_os_error());
    r
}

/// Packets waiting for their delivery time, in order, and the writer's wake-up.
type Schedule = (Mutex<VecDeque<(Instant, Vec<u8>)>>, Condvar);

/// Packets from `from` to `to` through `link`: a reader thread decides each packet's fate,
/// a writer thread delivers them at their time.
fn pump(
    mut from: File,
    mut to: File,
    mut link: Link,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let queue: Arc<Schedule> = Default::default();
    let q = queue.clone();
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let (m, cv) = &*q;
        loop {
            let mut g = m.lock().unwrap();
            while g.is_empty() && !stop2.load(Ordering::Relaxed) {
                g = cv.wait_timeout(g, Duration::from_millis(100)).unwrap().0;
            }
            if stop2.load(Ordering::Relaxed) {
                return;
            }
            let due = g.front().map(|(at, _)| *at).expect("not empty");
            let now = Instant::now();
            if due > now {
                let _ = cv.wait_timeout(g, due - now).unwrap();
                continue;
            }
            let (_, pkt) = g.pop_front().expect("not empty");
            drop(g);
            let _ = to.write(&pkt);
        }
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = from.read(&mut buf) else { return };
            let pkt = &buf[..n];
            // IPv4 only (the lab's addresses); the protocol byte says UDP.
            let udp = n > 9 && pkt[0] >> 4 == 4 && pkt[9] == 17;
            counters.packets.fetch_add(1, Ordering::Relaxed);
            match link.packet(Instant::now(), n, udp) {
                Fate::At(at) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    let (m, cv) = &*queue;
                    m.lock().unwrap().push_back((at, pkt.to_vec()));
                    cv.notify_one();
                }
                Fate::Lost => drop(counters.lost.fetch_add(1, Ordering::Relaxed)),
                Fate::QueueFull => drop(counters.queue_full.fetch_add(1, Ordering::Relaxed)),
                Fate::Blocked => drop(counters.blocked.fetch_add(1, Ordering::Relaxed)),
            }
        }
    });
}

pub struct LabArgs {
    /// Namespace name; its devices are `<name>h` (host) and `<name>s` (namespace).
    pub name: String,
    /// 1–254: the lab's addresses are 10.77.<index>.1 (host) and 10.77.<index>.2 (namespace).
    pub index: u8,
    pub down: LinkProfile,
    pub up: LinkProfile,
    pub seed: u64,
}

/// Sets the lab up, prints one `ready` line, and runs until SIGTERM, SIGINT or stdin closes;
/// then prints the link's figures as JSON and removes the namespace.
pub fn run(a: LabArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.name.len() <= 12, "namespace name too long");
    let (host_ip, ns_ip) = (
        format!("10.77.{}.1", a.index),
        format!("10.77.{}.2", a.index),
    );
    let (host_dev, ns_dev) = (format!("{}h", a.name), format!("{}s", a.name));
    let _ = sh(&["ip", "netns", "del", &a.name]);
    sh(&["ip", "netns", "add", &a.name])?;
    let cleanup = |name: &str| {
        let _ = sh(&["ip", "netns", "del", name]);
    };
    let setup = || -> anyhow::Result<(File, File)> {
        let host = open_tun(&host_dev)?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/32"),
            "dev",
            &host_dev,
        ])?;
        sh(&["ip", "link", "set", &host_dev, "up"])?;
        sh(&[
            "ip",
            "route",
            "add",
            &format!("{ns_ip}/32"),
            "dev",
            &host_dev,
        ])?;
        let ns = in_namespace(&a.name, || open_tun(&ns_dev))?;
        let n = |args: &[&str]| {
            let mut v = vec!["ip", "-n", a.name.as_str()];
            v.extend_from_slice(args);
            sh(&v)
        };
        n(&["link", "set", "lo", "up"])?;
        n(&["addr", "add", &format!("{ns_ip}/32"), "dev", &ns_dev])?;
        n(&["link", "set", &ns_dev, "up"])?;
        n(&["route", "add", "default", "dev", &ns_dev])?;
        Ok((host, ns))
    };
    let (host, ns) = match setup() {
        Ok(t) => t,
        Err(e) => {
            cleanup(&a.name);
            return Err(e);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (down_c, up_c) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
    pump(
        host.try_clone()?,
        ns.try_clone()?,
        Link::new(a.down, a.seed),
        down_c.clone(),
        stop.clone(),
    );
    pump(
        ns,
        host,
        Link::new(a.up, a.seed ^ 0x5eed),
        up_c.clone(),
        stop.clone(),
    );
    println!(
        "ready {}",
        serde_json::json!({"namespace": a.name, "host": host_ip, "student": ns_ip,
            "down": a.down, "up": a.up, "mean_loss_down": a.down.mean_loss()})
    );
    let _ = std::io::stdout().flush();
    // SIGTERM or SIGINT, or stdin closed (the test that started us is gone): stop.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let signalled = Arc::new(AtomicBool::new(false));
    let s2 = signalled.clone();
    std::thread::spawn(move || {
        let mut sig = 0;
        unsafe { libc::sigwait(&set, &mut sig) };
        s2.store(true, Ordering::Relaxed);
    });
    std::thread::spawn({
        let s3 = signalled.clone();
        move || {
            let mut b = [0u8; 64];
            while std::io::stdin()
                .read(&mut b)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
            s3.store(true, Ordering::Relaxed);
        }
    });
    while !signalled.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({"bench": "netlab", "namespace": a.name,
            "down": down_c.snapshot(), "up": up_c.snapshot()})
    );
    cleanup(&a.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_follows_the_profile_and_comes_in_bursts() {
        let p = LinkProfile::named("busy").unwrap();
        let mut l = Link::new(LinkProfile { rate_bps: 0, ..p }, 7);
        let t = Instant::now();
        let n = 200_000;
        let (mut lost, mut runs, mut prev) = (0, 0, false);
        for _ in 0..n {
            let gone = l.packet(t, 1200, true) == Fate::Lost;
            lost += gone as usize;
            runs += (gone && !prev) as usize;
            prev = gone;
        }
        let rate = lost as f64 / n as f64;
        assert!(
            (rate - p.mean_loss()).abs() < 0.005,
            "{rate} vs {}",
            p.mean_loss()
        );
        assert!(
            (0.025..0.035).contains(&rate),
            "busy Wi-Fi loses ~3 %: {rate}"
        );
        // Bursts: fewer runs of losses than losses (independent losses at 3 % would give ~97 %).
        assert!(
            (runs as f64) < 0.6 * lost as f64,
            "{runs} runs for {lost} losses"
        );
    }

    #[test]
    fn delay_jitter_and_rate_keep_order_and_bound_the_queue() {
        let p = LinkProfile {
            delay_ms: 20.0,
            jitter_ms: 10.0,
            rate_bps: 1_000_000,
            queue_ms: 100.0,
            ..LinkProfile::CLEAN
        };
        let mut l = Link::new(p, 1);
        let t = Instant::now();
        let mut last = t;
        let mut full = 0;
        for i in 0..100 {
            match l.packet(t, 1250, false) {
                // 1250 bytes at 1 Mbit/s: 10 ms each; the first leaves after 10 ms + delay.
                Fate::At(at) => {
                    assert!(at >= last, "in order");
                    let ms = at.duration_since(t).as_secs_f64() * 1000.0;
                    assert!(ms >= 10.0 * (i + 1) as f64 + 10.0 - 1e-6, "{i}: {ms}");
                    last = at;
                }
                Fate::QueueFull => full += 1,
                f => panic!("{f:?}"),
            }
        }
        // 100 ms of queue at 10 ms a packet: about 11 pass, the rest of the burst is dropped.
        assert!((85..=90).contains(&full), "{full} dropped");
    }

    #[test]
    fn a_blocked_profile_drops_udp_only() {
        let mut l = Link::new(LinkProfile::named("udp-blocked").unwrap(), 3);
        let t = Instant::now();
        assert_eq!(l.packet(t, 100, true), Fate::Blocked);
        assert!(
            (0..50)
                .filter(|_| matches!(l.packet(t, 100, false), Fate::At(_)))
                .count()
                > 45
        );
    }
}
