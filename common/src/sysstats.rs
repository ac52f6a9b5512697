//! Host CPU and memory, sampled for heartbeats and `/metrics`.

use parking_lot::Mutex;
use sysinfo::System;

/// CPU usage needs two samples some time apart; keeping one `System` alive between heartbeats
/// gives that for free.
pub struct SysStats {
    /// `None` where the platform offers no figures; heartbeats then report 0.
    sys: Mutex<Option<System>>,
}

impl Default for SysStats {
    fn default() -> Self {
        let sys = System::new().ok().map(|mut sys| {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            sys
        });
        Self {
            sys: Mutex::new(sys),
        }
    }
}

impl SysStats {
    /// (cpu %, memory %) of the host since the previous call.
    pub fn sample(&self) -> (f32, f32) {
        let mut guard = self.sys.lock();
        let Some(sys) = guard.as_mut() else {
            return (0.0, 0.0);
        };
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let cpu = sys.global_cpu_usage();
        let total = sys.total_memory().max(1) as f64;
        let mem = (sys.used_memory() as f64 / total * 100.0) as f32;
        (if cpu.is_finite() { cpu } else { 0.0 }, mem)
    }
}
