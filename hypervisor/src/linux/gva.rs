//! Guest-virtual to guest-physical translation by walking the guest's own page tables (Intel SDM
//! Vol. 3A 4.5, 4-level paging; 4.6 access rights), for fetching the instruction at a guest RIP
//! after an MMIO exit and checking that the access was permitted.
//!
//! The walk reads guest memory through [`GuestPhys`] (bounds-checked by the caller), never sets
//! accessed/dirty bits (it is an emulator's look-up, not an access), and models: present, R/W,
//! U/S, NX (with EFER.NXE), PS at the PDPT (1 GiB) and PD (2 MiB) levels, reserved physical-
//! address bits above MAXPHYADDR, CR0.WP for supervisor writes, and canonical addresses. Not
//! modelled: SMEP/SMAP, protection keys, 5-level paging, 32-bit and PAE paging (Linux runs in
//! long mode by the time it touches MMIO); with paging off, addresses are physical.

/// Reads guest-physical memory; `false` if the address is not guest memory.
pub trait GuestPhys {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool;
}

impl<F: FnMut(u64, &mut [u8]) -> bool> GuestPhys for F {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        self(gpa, buf)
    }
}

/// The paging state of the vCPU, from its VMCS guest-state fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingMode {
    /// CR0.PG: paging on (then long mode with 4-level paging is required).
    pub paging: bool,
    pub cr3: u64,
    /// CR0.WP: supervisor writes honour R/W.
    pub write_protect: bool,
    /// EFER.NXE: bit 63 of entries is XD; otherwise it is reserved.
    pub nxe: bool,
    /// MAXPHYADDR (CPUID 0x8000_0008 `EAX[7:0]`).
    pub phys_bits: u8,
}

/// The kind of access being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Execute,
}

/// An access: its kind and whether it is made at CPL 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: AccessKind,
    pub user: bool,
}

/// Page sizes: the same leaf sizes as the hypervisor's own tables.
pub use crate::paging::PageSize;

/// A successful translation and the effective rights along the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub gpa: u64,
    pub size: PageSize,
    pub writable: bool,
    pub user: bool,
    pub executable: bool,
}

/// Why a walk failed; `level` is 4 (PML4) .. 1 (PT), the level whose entry stopped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The address is not canonical (bits 63:47 not a sign extension).
    NonCanonical,
    /// An entry with P = 0.
    NotPresent { level: u8 },
    /// An entry with reserved bits set (above MAXPHYADDR, XD without NXE, PS at level 4).
    Reserved { level: u8 },
    /// The access is not allowed by the rights along the walk (page fault with P = 1).
    Protection { level: u8, access: Access },
    /// The entry's own address is not guest memory.
    Unreadable { gpa: u64, level: u8 },
}

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;

/// Translates `gva` and checks `access` against the rights.
pub fn translate(
    mem: &mut dyn GuestPhys,
    mode: &PagingMode,
    gva: u64,
    access: Access,
) -> Result<Translation, WalkError> {
    if !mode.paging {
        return Ok(Translation {
            gpa: gva,
            size: PageSize::Size4K,
            writable: true,
            user: true,
            executable: true,
        });
    }
    if ((gva as i64) << 16 >> 16) as u64 != gva {
        return Err(WalkError::NonCanonical);
    }
    let addr_mask = ((1u64 << mode.phys_bits.min(52)) - 1) & !0xfff;
    // Bits MAXPHYADDR..51 must be zero in every entry; bit 63 too unless NXE.
    let reserved = (((1u64 << 52) - 1) & !((1u64 << mode.phys_bits.min(52)) - 1))
        | if mode.nxe { 0 } else { XD };
    let (mut writable, mut user, mut executable) = (true, true, true);
    let mut table = mode.cr3 & addr_mask;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let gpa = table + ((gva >> shift) & 511) * 8;
        let mut b = [0u8; 8];
        if !mem.read(gpa, &mut b) {
            return Err(WalkError::Unreadable { gpa, level });
        }
        let e = u64::from_le_bytes(b);
        if e & P == 0 {
            return Err(WalkError::NotPresent { level });
        }
        let large = e & PS != 0 && level > 1;
        // PS is reserved in a PML4E; a large page's bits 12 .. (its offset width) other than
        // PAT (bit 12) must be zero.
        let large_reserved = match (large, level) {
            (true, 4) => u64::MAX,
            (true, 3) => ((1 << 30) - 1) & !0x1fff,
            (true, 2) => ((1 << 21) - 1) & !0x1fff,
            _ => 0,
        };
        if e & (reserved | large_reserved) != 0 {
            return Err(WalkError::Reserved { level });
        }
        writable &= e & RW != 0;
        user &= e & US != 0;
        executable &= !(mode.nxe && e & XD != 0);
        if large || level == 1 {
            let size = match level {
                3 => PageSize::Size1G,
                2 => PageSize::Size2M,
                _ => PageSize::Size4K,
            };
            let base = e & addr_mask & !(size.bytes() - 1);
            let t = Translation {
                gpa: base | (gva & (size.bytes() - 1)),
                size,
                writable,
                user,
                executable,
            };
            let allowed = match access.kind {
                AccessKind::Read => true,
                AccessKind::Write => writable || (!access.user && !mode.write_protect),
                AccessKind::Execute => executable,
            } && (user || !access.user);
            return if allowed {
                Ok(t)
            } else {
                Err(WalkError::Protection { level, access })
            };
        }
        table = e & addr_mask;
    }
    unreachable!("level 1 always ends the walk")
}

/// Fetches up to 15 instruction bytes at `rip` (checking execute rights at CPL 0 or 3). If the
/// instruction may cross into a page that cannot be fetched, the bytes up to the page end are
/// returned (the decoder then reports them as truncated if the instruction needed more); a
/// fault on the first page is an error.
pub fn fetch_instruction(
    mem: &mut dyn GuestPhys,
    mode: &PagingMode,
    rip: u64,
    user: bool,
) -> Result<([u8; 15], usize), WalkError> {
    let access = Access {
        kind: AccessKind::Execute,
        user,
    };
    let mut out = [0u8; 15];
    let mut got = 0usize;
    while got < out.len() {
        let va = rip.wrapping_add(got as u64);
        let t = match translate(mem, mode, va, access) {
            Ok(t) => t,
            Err(e) if got == 0 => return Err(e),
            Err(_) => break,
        };
        let in_page =
            (t.size.bytes() - (t.gpa & (t.size.bytes() - 1))).min(0x1000 - (va & 0xfff)) as usize;
        let n = in_page.min(out.len() - got);
        if !mem.read(t.gpa, &mut out[got..got + n]) {
            if got == 0 {
                return Err(WalkError::Unreadable {
                    gpa: t.gpa,
                    level: 0,
                });
            }
            break;
        }
        got += n;
    }
    Ok((out, got))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    /// Sparse guest memory of 4 KiB pages.
    #[derive(Default)]
    struct Mem(BTreeMap<u64, [u8; 4096]>);

    impl Mem {
        fn set(&mut self, gpa: u64, v: u64) {
            let p = self.0.entry(gpa & !0xfff).or_insert([0; 4096]);
            let o = (gpa & 0xfff) as usize;
            p[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn bytes(&mut self, gpa: u64, b: &[u8]) {
            for (i, &x) in b.iter().enumerate() {
                let a = gpa + i as u64;
                self.0.entry(a & !0xfff).or_insert([0; 4096])[(a & 0xfff) as usize] = x;
            }
        }
    }
    impl GuestPhys for Mem {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                let a = gpa + i as u64;
                match self.0.get(&(a & !0xfff)) {
                    Some(p) => *b = p[(a & 0xfff) as usize],
                    None => return false,
                }
            }
            true
        }
    }

    const MODE: PagingMode = PagingMode {
        paging: true,
        cr3: 0x1000,
        write_protect: true,
        nxe: true,
        phys_bits: 46,
    };
    const R0: Access = Access {
        kind: AccessKind::Read,
        user: false,
    };
    const W0: Access = Access {
        kind: AccessKind::Write,
        user: false,
    };
    const R3: Access = Access {
        kind: AccessKind::Read,
        user: true,
    };
    const W3: Access = Access {
        kind: AccessKind::Write,
        user: true,
    };
    const X0: Access = Access {
        kind: AccessKind::Execute,
        user: false,
    };

    /// Kernel-style map: 0xffff_ffff_8000_0000 (PML4 511, PDPT 510) -> 2 MiB pages at 16 MiB;
    /// direct map 0xffff_8880_0000_0000 (PML4 273) -> 1 GiB page at 0; a user 4 KiB page at
    /// 0x40_0000 -> 0x20_0000 (read-only), and 0x40_1000 -> 0x20_1000 (writable, NX).
    fn mem() -> Mem {
        let mut m = Mem::default();
        m.set(0x1000 + 511 * 8, 0x2000 | P | RW);
        m.set(0x2000 + 510 * 8, 0x3000 | P | RW);
        m.set(0x3000, 0x100_0000 | P | RW | PS);
        m.set(0x3000 + 8, 0x120_0000 | P | PS | XD); // read-only, no-exec 2 MiB page
        m.set(0x1000 + 273 * 8, 0x4000 | P | RW);
        m.set(0x4000, P | RW | PS | XD);
        m.set(0x1000, 0x5000 | P | RW | US);
        m.set(0x5000, 0x6000 | P | RW | US);
        m.set(0x6000 + 2 * 8, 0x7000 | P | RW | US);
        m.set(0x7000, 0x20_0000 | P | US);
        m.set(0x7000 + 8, 0x20_1000 | P | RW | US | XD);
        m.set(0x7000 + 2 * 8, 0x20_2000 | RW | US); // not present
        m
    }

    #[test]
    fn translates_all_page_sizes() {
        let mut m = mem();
        let t = translate(&mut m, &MODE, 0xffff_ffff_8000_1234, X0).unwrap();
        assert_eq!(
            (t.gpa, t.size, t.writable, t.executable, t.user),
            (0x100_1234, PageSize::Size2M, true, true, false)
        );
        let t = translate(&mut m, &MODE, 0xffff_8880_0fee_00b0, R0).unwrap();
        assert_eq!((t.gpa, t.size), (0x0fee_00b0, PageSize::Size1G));
        let t = translate(&mut m, &MODE, 0x40_0abc, R3).unwrap();
        assert_eq!(
            (t.gpa, t.size, t.user, t.writable),
            (0x20_0abc, PageSize::Size4K, true, false)
        );
    }

    #[test]
    fn rights_along_the_walk() {
        let mut m = mem();
        // Supervisor write to a read-only page: allowed only with CR0.WP clear.
        assert_eq!(
            translate(&mut m, &MODE, 0xffff_ffff_8020_0000, W0),
            Err(WalkError::Protection {
                level: 2,
                access: W0
            })
        );
        let no_wp = PagingMode {
            write_protect: false,
            ..MODE
        };
        assert!(translate(&mut m, &no_wp, 0xffff_ffff_8020_0000, W0).is_ok());
        // User write to a read-only user page faults even without WP.
        assert_eq!(
            translate(&mut m, &no_wp, 0x40_0000, W3),
            Err(WalkError::Protection {
                level: 1,
                access: W3
            })
        );
        assert!(translate(&mut m, &MODE, 0x40_1000, W3).is_ok());
        // User access to supervisor pages.
        assert_eq!(
            translate(&mut m, &MODE, 0xffff_ffff_8000_0000, R3),
            Err(WalkError::Protection {
                level: 2,
                access: R3
            })
        );
        // Execute of an XD page; without NXE bit 63 is reserved instead.
        assert_eq!(
            translate(&mut m, &MODE, 0x40_1000, X0),
            Err(WalkError::Protection {
                level: 1,
                access: X0
            })
        );
        let no_nx = PagingMode { nxe: false, ..MODE };
        assert_eq!(
            translate(&mut m, &no_nx, 0x40_1000, R0),
            Err(WalkError::Reserved { level: 1 })
        );
    }

    #[test]
    fn failures_name_their_level() {
        let mut m = mem();
        assert_eq!(
            translate(&mut m, &MODE, 0x40_2000, R0),
            Err(WalkError::NotPresent { level: 1 })
        );
        assert_eq!(
            translate(&mut m, &MODE, 0x8000_0000, R0),
            Err(WalkError::NotPresent { level: 3 })
        );
        assert_eq!(
            translate(&mut m, &MODE, 0xffff_ff00_0000_0000, R0),
            Err(WalkError::NotPresent { level: 4 })
        );
        assert_eq!(
            translate(&mut m, &MODE, 0x40_0000 + (1 << 21), R0),
            Err(WalkError::NotPresent { level: 2 })
        );
        assert_eq!(
            translate(&mut m, &MODE, 0x0000_8000_0000_0000, R0),
            Err(WalkError::NonCanonical)
        );
        // Reserved bits: an address above MAXPHYADDR, PS in a PML4E, a misaligned 2 MiB page.
        m.set(0x7000 + 3 * 8, (1 << 47) | P);
        assert_eq!(
            translate(&mut m, &MODE, 0x40_3000, R0),
            Err(WalkError::Reserved { level: 1 })
        );
        m.set(0x1000 + 8, P | PS);
        assert_eq!(
            translate(&mut m, &MODE, 1 << 39, R0),
            Err(WalkError::Reserved { level: 4 })
        );
        m.set(0x3000 + 2 * 8, 0x100_0000 | 0x2000 | P | PS);
        assert_eq!(
            translate(&mut m, &MODE, 0xffff_ffff_8040_0000, R0),
            Err(WalkError::Reserved { level: 2 })
        );
        // A table outside guest memory.
        m.set(0x3000 + 3 * 8, 0x9999_0000 | P | RW);
        assert_eq!(
            translate(&mut m, &MODE, 0xffff_ffff_8060_0000, R0),
            Err(WalkError::Unreadable {
                gpa: 0x9999_0000,
                level: 1
            })
        );
        // Paging off: identity.
        let off = PagingMode {
            paging: false,
            ..MODE
        };
        assert_eq!(
            translate(&mut m, &off, 0xfee0_0300, W0).unwrap().gpa,
            0xfee0_0300
        );
    }

    #[test]
    fn fetch_crosses_pages_and_stops_at_an_unmapped_one() {
        let mut m = mem();
        // Kernel text: instruction bytes at the end of a 4 KiB boundary inside a 2 MiB page.
        m.bytes(
            0x100_0ffc,
            &[0x8b, 0x80, 0xb0, 0x00, 0x00, 0x00, 0x90, 0x90],
        );
        let (b, n) = fetch_instruction(&mut m, &MODE, 0xffff_ffff_8000_0ffc, false).unwrap();
        assert_eq!(n, 15);
        assert_eq!(&b[..6], &[0x8b, 0x80, 0xb0, 0, 0, 0]);
        // User code page followed by a non-present page: only the bytes up to the page end.
        m.set(0x7000 + 8, 0x20_1000 | P | US); // make 0x40_1000 executable
        m.bytes(0x20_1ffd, &[0x89, 0x37, 0x90]);
        let (b, n) = fetch_instruction(&mut m, &MODE, 0x40_1ffd, true).unwrap();
        assert_eq!((n, &b[..3]), (3, &[0x89, 0x37, 0x90][..]));
        // Fetching from an XD page faults at once.
        m.set(0x7000 + 8, 0x20_1000 | P | US | XD);
        assert_eq!(
            fetch_instruction(&mut m, &MODE, 0x40_1000, true),
            Err(WalkError::Protection {
                level: 1,
                access: Access {
                    kind: AccessKind::Execute,
                    user: true
                }
            })
        );
    }
}
