//! Channel 0 of the 8254 programmable interval timer (IRQ 0), after the Intel 82C54 data sheet:
//! the control word at 0x43 (channel, access mode, operating mode), the counter latch command,
//! the read-back command (latching channel 0's count), counts written and read as LSB, MSB or
//! LSB then MSB at 0x40, a count of 0 meaning 65536, and modes 0 (interrupt on terminal count),
//! 2 (rate generator), 3 (square wave) and 4 (software-triggered strobe). Time comes from the
//! caller as a TSC value and the TSC frequency; the counter runs at [`PIT_HZ`].
//!
//! Simplifications: the read-back count of mode 3 is the linear count (the chip decrements by
//! two per half-period), BCD counting is not modelled, and channels 1 and 2 (and the port 0x61
//! speaker gate) are absent: their ports read 0xff and ignore writes.

/// The 8254's input clock on a PC (Hz).
pub const PIT_HZ: u64 = 1_193_182;

/// Ports.
pub const CHANNEL0: u16 = 0x40;
pub const CONTROL: u16 = 0x43;

/// Channel 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pit {
    mode: u8,
    /// 1 LSB, 2 MSB, 3 LSB then MSB.
    access: u8,
    /// The count in effect (1..=65536), 0 before any count is written.
    reload: u32,
    low_written: Option<u8>,
    read_msb_next: bool,
    latched: Option<u16>,
    started: u64,
    deadline: Option<u64>,
}

fn tsc_to_ticks(tsc: u64, tsc_hz: u64) -> u64 {
    (u128::from(tsc) * u128::from(PIT_HZ) / u128::from(tsc_hz.max(1))) as u64
}

fn ticks_to_tsc(ticks: u64, tsc_hz: u64) -> u64 {
    (u128::from(ticks) * u128::from(tsc_hz)).div_ceil(u128::from(PIT_HZ)) as u64
}

impl Pit {
    fn periodic(&self) -> bool {
        matches!(self.mode, 2 | 3)
    }

    /// The counter's value at `now`.
    fn count_now(&self, now: u64, tsc_hz: u64) -> u16 {
        if self.reload == 0 {
            return 0;
        }
        let elapsed = tsc_to_ticks(now.saturating_sub(self.started), tsc_hz);
        let reload = u64::from(self.reload);
        if self.periodic() {
            (reload - elapsed % reload) as u16
        } else {
            // Modes 0 and 4 keep counting down through zero and wrap (the output stays put).
            (reload.wrapping_sub(elapsed) & 0xffff) as u16
        }
    }

    /// A guest `OUT` of `v` to `port` at TSC `now`.
    pub fn write(&mut self, port: u16, v: u8, now: u64, tsc_hz: u64) {
        match port {
            CONTROL => {
                let channel = v >> 6;
                if channel == 3 {
                    // Read-back: bit 5 clear latches the count of the channels selected in 3:1.
                    if v & 0x20 == 0 && v & 0x02 != 0 && self.latched.is_none() {
                        self.latched = Some(self.count_now(now, tsc_hz));
                    }
                    return;
                }
                if channel != 0 {
                    return;
                }
                let access = (v >> 4) & 3;
                if access == 0 {
                    // Counter latch command; a second latch before the read is ignored.
                    if self.latched.is_none() {
                        self.latched = Some(self.count_now(now, tsc_hz));
                    }
                    return;
                }
                self.access = access;
                self.mode = match (v >> 1) & 7 {
                    6 => 2,
                    7 => 3,
                    m => m,
                };
                self.low_written = None;
                self.read_msb_next = false;
                self.latched = None;
                // A control word stops the counter until a new count arrives.
                self.reload = 0;
                self.deadline = None;
            }
            CHANNEL0 => {
                let count = match (self.access, self.low_written) {
                    (1, _) => u32::from(v),
                    (2, _) => u32::from(v) << 8,
                    (3, None) => {
                        self.low_written = Some(v);
                        return;
                    }
                    (3, Some(lo)) => {
                        self.low_written = None;
                        u32::from(lo) | (u32::from(v) << 8)
                    }
                    _ => return, // no control word yet
                };
                self.reload = if count == 0 { 0x1_0000 } else { count };
                self.started = now;
                self.deadline = Some(now + ticks_to_tsc(u64::from(self.reload), tsc_hz));
            }
            _ => {}
        }
    }

    /// A guest `IN` from `port` at TSC `now`.
    pub fn read(&mut self, port: u16, now: u64, tsc_hz: u64) -> u8 {
        if port != CHANNEL0 {
            return 0xff;
        }
        let value = self.latched.unwrap_or_else(|| self.count_now(now, tsc_hz));
        let (byte, done) = match self.access {
            1 => (value as u8, true),
            2 => ((value >> 8) as u8, true),
            _ => {
                let msb = self.read_msb_next;
                self.read_msb_next = !msb;
                (if msb { (value >> 8) as u8 } else { value as u8 }, msb)
            }
        };
        if done {
            self.latched = None;
        }
        byte
    }

    /// Whether the output produced an interrupt edge by `now`. Periodic modes re-arm on their
    /// period grid; periods missed while the tenant did not run produce one interrupt.
    pub fn poll(&mut self, now: u64, tsc_hz: u64) -> bool {
        let Some(d) = self.deadline else { return false };
        if now < d {
            return false;
        }
        if self.periodic() {
            let period = ticks_to_tsc(u64::from(self.reload), tsc_hz).max(1);
            let periods = (now - self.started) / period;
            self.started += periods * period;
            self.deadline = Some(self.started + period);
        } else {
            self.deadline = None;
        }
        true
    }

    /// The TSC of the next interrupt edge.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TSC at exactly 1000 × the PIT clock keeps the arithmetic readable.
    const HZ: u64 = PIT_HZ * 1000;

    #[test]
    fn rate_generator_as_linux_programs_it() {
        // Linux's init_pit_timer: 0x34 (channel 0, LSB/MSB, mode 2), LATCH = 1193182/250 = 4772.
        let mut p = Pit::default();
        p.write(CONTROL, 0x34, 0, HZ);
        assert_eq!(p.deadline(), None, "no count yet");
        p.write(CHANNEL0, (4772 & 0xff) as u8, 0, HZ);
        assert_eq!(p.deadline(), None, "only the LSB so far");
        p.write(CHANNEL0, (4772 >> 8) as u8, 1000, HZ);
        assert_eq!(p.deadline(), Some(1000 + 4772 * 1000));
        assert!(!p.poll(4_772_999, HZ));
        assert!(p.poll(4_773_000, HZ));
        assert_eq!(p.deadline(), Some(1000 + 2 * 4_772_000));
        // Three periods late: one edge, next deadline on the grid.
        assert!(p.poll(1000 + 5 * 4_772_000 + 7, HZ));
        assert!(!p.poll(1000 + 5 * 4_772_000 + 8, HZ));
        assert_eq!(p.deadline(), Some(1000 + 6 * 4_772_000));
    }

    #[test]
    fn counter_latch_and_lsb_msb_reads() {
        let mut p = Pit::default();
        p.write(CONTROL, 0x34, 0, HZ);
        p.write(CHANNEL0, 0x00, 0, HZ);
        p.write(CHANNEL0, 0x10, 0, HZ); // 0x1000
        p.write(CONTROL, 0x00, 0x100 * 1000, HZ); // latch at 0x100 ticks
                                                  // The latched value survives time passing until both bytes are read.
        assert_eq!(p.read(CHANNEL0, 0x200 * 1000, HZ), 0x00);
        assert_eq!(p.read(CHANNEL0, 0x300 * 1000, HZ), 0x0f);
        // Unlatched: live count, LSB then MSB.
        assert_eq!(p.read(CHANNEL0, 0x800 * 1000, HZ), 0x00);
        assert_eq!(p.read(CHANNEL0, 0x800 * 1000, HZ), 0x08);
        // Read-back command latching channel 0.
        p.write(CONTROL, 0xc2, 0xfff * 1000, HZ);
        assert_eq!(p.read(CHANNEL0, 0, HZ), 0x01);
        assert_eq!(p.read(CHANNEL0, 0, HZ), 0x00);
        // LSB-only access.
        p.write(CONTROL, 0x10, 0, HZ); // LSB only, mode 0
        p.write(CHANNEL0, 200, 0, HZ);
        assert_eq!(p.read(CHANNEL0, 50 * 1000, HZ), 150);
        assert_eq!(
            p.read(CHANNEL0, 50 * 1000, HZ),
            150,
            "no byte toggling in LSB mode"
        );
    }

    #[test]
    fn one_shot_fires_once_and_wraps() {
        let mut p = Pit::default();
        p.write(CONTROL, 0x30, 0, HZ); // mode 0
        p.write(CHANNEL0, 100, 0, HZ);
        p.write(CHANNEL0, 0, 0, HZ);
        assert!(p.poll(100 * 1000, HZ));
        assert_eq!(p.deadline(), None);
        assert!(!p.poll(10_000 * 1000, HZ));
        p.write(CONTROL, 0x00, 101 * 1000, HZ);
        assert_eq!(
            p.read(CHANNEL0, 0, HZ),
            0xff,
            "counts on through zero: 0xffff"
        );
        assert_eq!(p.read(CHANNEL0, 0, HZ), 0xff);
        // A count of 0 means 65536.
        p.write(CONTROL, 0x30, 0, HZ);
        p.write(CHANNEL0, 0, 0, HZ);
        p.write(CHANNEL0, 0, 0, HZ);
        assert_eq!(p.deadline(), Some(65_536 * 1000));
        // A new control word stops the counter.
        p.write(CONTROL, 0x30, 5, HZ);
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn other_channels_are_absent() {
        let mut p = Pit::default();
        p.write(CONTROL, 0xb6, 0, HZ); // channel 2, the speaker/calibration channel
        p.write(0x42, 0x12, 0, HZ);
        assert_eq!(p.read(0x42, 0, HZ), 0xff);
        assert_eq!(p.read(0x41, 0, HZ), 0xff);
        assert_eq!(p, Pit::default());
    }
}
