//! The console's output queue: log lines wait here for the UART instead of holding up the
//! CPU that wrote them.
//!
//! The console is a 16550 UART at 115200 baud: about 87 µs per byte, so a 100-byte log line
//! takes 8.7 ms to leave. Written by polling, byte by byte, every line cost its CPU that long
//! (an engine request that logs its completion paid ~9 ms for the line, far more than the work).
//! The kernel's console now appends to this queue and hands the UART only what it takes
//! without waiting (its 16-byte FIFO when that is empty) whenever it passes by: after each log
//! record, between the boot CPU's slices, before a CPU halts. Errors and warnings, the crash
//! paths and the exit drain the queue completely, so nothing is lost where it matters; a
//! queue that fills up makes the writer wait for room, as before.

/// Bytes waiting for the UART, oldest first (a fixed ring: no allocation on the log path).
pub struct ByteQueue<const N: usize> {
    buf: [u8; N],
    head: usize,
    len: usize,
}

impl<const N: usize> Default for ByteQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ByteQueue<N> {
    pub const fn new() -> Self {
        Self { buf: [0; N], head: 0, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Appends `b`; false (nothing changed) when full.
    pub fn push(&mut self, b: u8) -> bool {
        if self.is_full() {
            return false;
        }
        self.buf[(self.head + self.len) % N] = b;
        self.len += 1;
        true
    }

    /// Takes the oldest byte.
    pub fn pop(&mut self) -> Option<u8> {
        if self.is_empty() {
            return None;
        }
        let b = self.buf[self.head];
        self.head = (self.head + 1) % N;
        self.len -= 1;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteQueue;

    #[test]
    fn bytes_leave_in_order_across_the_wrap_and_a_full_queue_refuses() {
        let mut q = ByteQueue::<4>::new();
        assert!(q.is_empty() && q.pop().is_none());
        for b in 1..=4 {
            assert!(q.push(b));
        }
        assert!(q.is_full() && !q.push(9), "a full queue keeps what it has");
        assert_eq!((q.pop(), q.pop()), (Some(1), Some(2)));
        assert!(q.push(5) && q.push(6), "room again, across the end of the array");
        assert!(!q.push(7));
        let out: Vec<u8> = core::iter::from_fn(|| q.pop()).collect();
        assert_eq!(out, [3, 4, 5, 6]);
        assert_eq!(q.len(), 0);
    }
}
