//! Per-tenant accounting: counters the dispatcher, the engine scheduler and the VMM bump, and
//! their rendering in the Prometheus text exposition format (version 0.0.4) for
//! `cargo xtask run --metrics` and the serial log at shutdown.
//!
//! Counters only grow (saturating, never wrapping); gauges (memory now held) go up and down and
//! never below zero. Rendering writes each metric family once, `# HELP` and `# TYPE` first, then
//! one sample per tenant, with label values escaped as the format requires (`\\`, `\"`, `\n`).

use alloc::string::String;
use core::fmt::{self, Write};

/// One tenant's counters and gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Hypercalls made, and of those answered with an error.
    pub hypercalls: u64,
    pub errors: u64,
    /// Engine operations completed, and tokens generated or prefilled.
    pub ops: u64,
    pub tokens: u64,
    /// Engine time spent on the tenant's work, in nanoseconds.
    pub engine_ns: u64,
    /// Submissions refused for a quota (registered memory, in-flight ops, KV cache).
    pub quota_refusals: u64,
    /// Faults that stopped or were reflected to the tenant (EPT violations, triple faults,
    /// budget overruns).
    pub faults: u64,
    /// Gauges, in bytes: guest RAM, registered tensor memory and KV cache held now.
    pub memory_bytes: u64,
    pub registered_bytes: u64,
    pub kv_cache_bytes: u64,
}

impl Usage {
    pub fn hypercall(&mut self, ok: bool) {
        self.hypercalls = self.hypercalls.saturating_add(1);
        if !ok {
            self.errors = self.errors.saturating_add(1);
        }
    }

    /// An engine operation finished: `tokens` tokens, `engine_ns` of engine time.
    pub fn op(&mut self, tokens: u64, engine_ns: u64) {
        self.ops = self.ops.saturating_add(1);
        self.tokens = self.tokens.saturating_add(tokens);
        self.engine_ns = self.engine_ns.saturating_add(engine_ns);
    }

    pub fn quota_refused(&mut self) {
        self.quota_refusals = self.quota_refusals.saturating_add(1);
    }

    pub fn fault(&mut self) {
        self.faults = self.faults.saturating_add(1);
    }

    pub fn charge(&mut self, gauge: Gauge, bytes: u64) {
        let g = self.gauge_mut(gauge);
        *g = g.saturating_add(bytes);
    }

    /// Releases `bytes` of a gauge; releasing more than is held is a caller bug and clamps to 0.
    pub fn release(&mut self, gauge: Gauge, bytes: u64) {
        let g = self.gauge_mut(gauge);
        *g = g.saturating_sub(bytes);
    }

    fn gauge_mut(&mut self, gauge: Gauge) -> &mut u64 {
        match gauge {
            Gauge::Memory => &mut self.memory_bytes,
            Gauge::Registered => &mut self.registered_bytes,
            Gauge::KvCache => &mut self.kv_cache_bytes,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gauge {
    Memory,
    Registered,
    KvCache,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// How a value is printed: an integer, or nanoseconds printed as seconds.
#[derive(Clone, Copy)]
enum Unit {
    Count,
    NanosAsSeconds,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    unit: Unit,
    get: fn(&Usage) -> u64,
}

const FAMILIES: &[Family] = &[
    Family { name: "tensorvisor_tenant_hypercalls_total", help: "Hypercalls made by the tenant.", kind: Kind::Counter, unit: Unit::Count, get: |u| u.hypercalls },
    Family { name: "tensorvisor_tenant_hypercall_errors_total", help: "Hypercalls answered with an error.", kind: Kind::Counter, unit: Unit::Count, get: |u| u.errors },
    Family { name: "tensorvisor_tenant_ops_total", help: "Engine operations completed for the tenant.", kind: Kind::Counter, unit: Unit::Count, get: |u| u.ops },
    Family { name: "tensorvisor_tenant_tokens_total", help: "Tokens prefilled or generated for the tenant.", kind: Kind::Counter, unit: Unit::Count, get: |u| u.tokens },
    Family { name: "tensorvisor_tenant_engine_seconds_total", help: "Engine time spent on the tenant's work.", kind: Kind::Counter, unit: Unit::NanosAsSeconds, get: |u| u.engine_ns },
    Family { name: "tensorvisor_tenant_quota_refusals_total", help: "Requests refused because a quota was exhausted.", kind: Kind::Counter, unit: Unit::Count, get: |u| u.quota_refusals },
    Family { name: "tensorvisor_tenant_faults_total", help: "Faults that stopped the tenant or were reported to it.", kind: Kind::Counter, unit: Unit::Count, get: |u| u.faults },
    Family { name: "tensorvisor_tenant_memory_bytes", help: "Guest RAM held by the tenant.", kind: Kind::Gauge, unit: Unit::Count, get: |u| u.memory_bytes },
    Family { name: "tensorvisor_tenant_registered_bytes", help: "Tensor memory the tenant has registered.", kind: Kind::Gauge, unit: Unit::Count, get: |u| u.registered_bytes },
    Family { name: "tensorvisor_tenant_kv_cache_bytes", help: "KV-cache bytes held by the tenant's sessions.", kind: Kind::Gauge, unit: Unit::Count, get: |u| u.kv_cache_bytes },
];

/// Writes a label value escaped for the text format.
fn write_label(out: &mut dyn Write, value: &str) -> fmt::Result {
    for c in value.chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' => out.write_str("\\\"")?,
            '\n' => out.write_str("\\n")?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// Writes every metric family for `tenants` (name, usage) to `out`.
pub fn write_prometheus<'a>(out: &mut dyn Write, tenants: impl Iterator<Item = (&'a str, &'a Usage)> + Clone) -> fmt::Result {
    for f in FAMILIES {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        writeln!(out, "# HELP {} {}", f.name, f.help)?;
        writeln!(out, "# TYPE {} {kind}", f.name)?;
        for (name, usage) in tenants.clone() {
            write!(out, "{}{{tenant=\"", f.name)?;
            write_label(out, name)?;
            let v = (f.get)(usage);
            match f.unit {
                Unit::Count => writeln!(out, "\"}} {v}")?,
                Unit::NanosAsSeconds => writeln!(out, "\"}} {}.{:09}", v / 1_000_000_000, v % 1_000_000_000)?,
            }
        }
    }
    Ok(())
}

/// [`write_prometheus`] into a new string.
pub fn render_prometheus<'a>(tenants: impl Iterator<Item = (&'a str, &'a Usage)> + Clone) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_prometheus(&mut s, tenants);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn sample() -> Vec<(&'static str, Usage)> {
        let mut a = Usage::default();
        for _ in 0..12 {
            a.op(3, 250_000_000);
        }
        a.hypercall(true);
        a.hypercall(false);
        a.charge(Gauge::Memory, 8 << 20);
        a.charge(Gauge::KvCache, 4096);
        a.release(Gauge::KvCache, 1024);
        let mut b = Usage::default();
        b.fault();
        b.quota_refused();
        b.release(Gauge::Registered, 5);
        vec![("a", a), ("b\"\\\nx", b)]
    }

    #[test]
    fn counters_and_gauges_move_as_documented() {
        let s = sample();
        let a = &s[0].1;
        assert_eq!((a.ops, a.tokens, a.engine_ns), (12, 36, 3_000_000_000));
        assert_eq!((a.hypercalls, a.errors), (2, 1));
        assert_eq!((a.memory_bytes, a.kv_cache_bytes), (8 << 20, 3072));
        assert_eq!(s[1].1.registered_bytes, 0, "a release below zero clamps");
        let mut big = Usage { ops: u64::MAX, ..Usage::default() };
        big.op(1, 1);
        assert_eq!(big.ops, u64::MAX);
    }

    #[test]
    fn renders_the_text_format() {
        let s = sample();
        let text = render_prometheus(s.iter().map(|(n, u)| (*n, u)));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"tensorvisor_tenant_ops_total{tenant=\"a\"} 12"));
        assert!(lines.contains(&"tensorvisor_tenant_tokens_total{tenant=\"a\"} 36"));
        assert!(lines.contains(&"tensorvisor_tenant_engine_seconds_total{tenant=\"a\"} 3.000000000"));
        assert!(lines.contains(&"tensorvisor_tenant_kv_cache_bytes{tenant=\"a\"} 3072"));
        assert!(lines.contains(&"tensorvisor_tenant_faults_total{tenant=\"b\\\"\\\\\\nx\"} 1"));
        // Each family: HELP, TYPE, then one sample per tenant, nothing else.
        assert_eq!(lines.len(), FAMILIES.len() * 4);
        for (k, f) in FAMILIES.iter().enumerate() {
            let block = &lines[k * 4..k * 4 + 4];
            assert!(block[0].starts_with(&alloc::format!("# HELP {} ", f.name)));
            let kind = if f.name.ends_with("_total") { "counter" } else { "gauge" };
            assert_eq!(block[1], alloc::format!("# TYPE {} {kind}", f.name));
            assert!(block[2].starts_with(&alloc::format!("{}{{tenant=\"a\"}} ", f.name)));
            assert!(block[3].starts_with(&alloc::format!("{}{{tenant=\"b", f.name)));
        }
        // No raw newline escapes the label: every line is a comment or a sample.
        assert!(lines.iter().all(|l| l.starts_with("# ") || l.starts_with("tensorvisor_tenant_")));
    }

    #[test]
    fn seconds_keep_nanosecond_precision() {
        let u = Usage { engine_ns: 1_000_000_007, ..Usage::default() };
        let text = render_prometheus([("t", &u)].into_iter());
        assert!(text.contains("tensorvisor_tenant_engine_seconds_total{tenant=\"t\"} 1.000000007\n"));
    }
}
