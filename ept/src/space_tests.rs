//! Host tests of [`GuestAddressSpace`] over the heap frame source.

use std::collections::BTreeMap;

use vmx::MemoryType;

use crate::addr::{GuestPhysAddr, HostPhysAddr};
use crate::entry::EptPerms;
use crate::frame::fake::HeapFrames;
use crate::space::{EptError, GuestAddressSpace, NeedsInvept, PageSize, PageSizes};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
const WB: MemoryType = MemoryType::WriteBack;

fn g(v: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(v).unwrap()
}

fn h(v: u64) -> HostPhysAddr {
    HostPhysAddr::new(v).unwrap()
}

fn space(sizes: PageSizes) -> GuestAddressSpace<HeapFrames> {
    GuestAddressSpace::new(HeapFrames::new(0x7000_0000_0000, 10_000), sizes).unwrap()
}

fn tr(s: &GuestAddressSpace<HeapFrames>, gpa: u64) -> Option<(u64, EptPerms, PageSize)> {
    s.translate(g(gpa))
        .unwrap()
        .map(|t| (t.hpa.as_u64(), t.perms, t.page_size))
}

#[test]
fn maps_4k_pages_and_translates_offsets() {
    let mut s = space(PageSizes::ALL);
    s.map(g(0x1000), h(0x20_5000), 3 * K4, EptPerms::RW, WB)
        .unwrap();
    assert_eq!(
        tr(&s, 0x1000),
        Some((0x20_5000, EptPerms::RW, PageSize::Size4K))
    );
    assert_eq!(
        tr(&s, 0x2abc),
        Some((0x20_6abc, EptPerms::RW, PageSize::Size4K))
    );
    assert_eq!(
        tr(&s, 0x3fff),
        Some((0x20_7fff, EptPerms::RW, PageSize::Size4K))
    );
    assert_eq!(tr(&s, 0x0fff), None);
    assert_eq!(tr(&s, 0x4000), None);
    let t = s.translate(g(0x1000)).unwrap().unwrap();
    assert_eq!(t.memory_type, Ok(WB));
    assert_eq!(t.page_gpa, g(0x1000));
    assert_eq!(s.table_count(), 4, "PML4, PDPT, PD, PT");
}

#[test]
fn uses_2m_and_1g_pages_when_aligned() {
    let mut s = space(PageSizes::ALL);
    s.map(g(G1), h(4 * G1), G1 + 2 * M2 + K4, EptPerms::RWX, WB)
        .unwrap();
    assert_eq!(
        tr(&s, G1 + 0x1234),
        Some((4 * G1 + 0x1234, EptPerms::RWX, PageSize::Size1G))
    );
    assert_eq!(
        tr(&s, 2 * G1 + M2 + 5),
        Some((5 * G1 + M2 + 5, EptPerms::RWX, PageSize::Size2M))
    );
    assert_eq!(
        tr(&s, 2 * G1 + 2 * M2),
        Some((5 * G1 + 2 * M2, EptPerms::RWX, PageSize::Size4K))
    );
    assert_eq!(tr(&s, 2 * G1 + 2 * M2 + K4), None);
    // PML4, PDPT, one PD (for the 2M pages and the PT), one PT.
    assert_eq!(s.table_count(), 4);
}

#[test]
fn page_size_limited_by_caps_and_hpa_alignment() {
    let mut s = space(PageSizes::ONLY_4K);
    s.map(g(0), h(M2), M2, EptPerms::READ, WB).unwrap();
    assert_eq!(tr(&s, M2 - 1).map(|t| t.2), Some(PageSize::Size4K));
    assert_eq!(s.table_count(), 4);

    let mut s = space(PageSizes {
        size_2m: true,
        size_1g: false,
    });
    s.map(g(0), h(0), G1, EptPerms::READ, WB).unwrap();
    assert_eq!(tr(&s, 0).map(|t| t.2), Some(PageSize::Size2M));

    // GPA 2M-aligned, HPA only 4K-aligned: 4K pages.
    let mut s = space(PageSizes::ALL);
    assert_eq!(s.best_page_size(g(M2), h(M2 + K4), M2), PageSize::Size4K);
    s.map(g(M2), h(M2 + K4), M2, EptPerms::READ, WB).unwrap();
    assert_eq!(
        tr(&s, M2 + 7),
        Some((M2 + K4 + 7, EptPerms::READ, PageSize::Size4K))
    );
    // Unaligned start: 4K pages up to the 2M boundary, then a 2M page, then 4K again.
    let mut s = space(PageSizes::ALL);
    s.map(g(M2 - K4), h(8 * M2 - K4), M2 + 2 * K4, EptPerms::READ, WB)
        .unwrap();
    assert_eq!(tr(&s, M2 - K4).map(|t| t.2), Some(PageSize::Size4K));
    assert_eq!(
        tr(&s, M2).map(|t| (t.0, t.2)),
        Some((8 * M2, PageSize::Size2M))
    );
    assert_eq!(
        tr(&s, 2 * M2).map(|t| (t.0, t.2)),
        Some((9 * M2, PageSize::Size4K))
    );
}

#[test]
fn unmap_splits_2m_page() {
    let mut s = space(PageSizes::ALL);
    s.map(g(0), h(M2), M2, EptPerms::RW, WB).unwrap();
    assert_eq!(s.table_count(), 3);
    assert_eq!(s.unmap(g(0x5000), K4), Ok(NeedsInvept));
    assert_eq!(s.table_count(), 4, "the 2M page became a page table");
    assert_eq!(tr(&s, 0x5000), None);
    assert_eq!(
        tr(&s, 0x4fff),
        Some((M2 + 0x4fff, EptPerms::RW, PageSize::Size4K))
    );
    assert_eq!(
        tr(&s, 0x6000),
        Some((M2 + 0x6000, EptPerms::RW, PageSize::Size4K))
    );
    assert_eq!(
        tr(&s, M2 - 1),
        Some((2 * M2 - 1, EptPerms::RW, PageSize::Size4K))
    );
    assert_eq!(
        s.translate(g(0x6000)).unwrap().unwrap().memory_type,
        Ok(WB),
        "attributes kept"
    );
}

#[test]
fn unmap_splits_1g_page_down_to_4k() {
    let mut s = space(PageSizes::ALL);
    s.map(g(0), h(G1), G1, EptPerms::RWX, WB).unwrap();
    assert_eq!(s.table_count(), 2);
    let _ = s.unmap(g(3 * M2 + 7 * K4), 2 * K4).unwrap();
    assert_eq!(s.table_count(), 4, "1G → PD of 2M pages → one PT");
    assert_eq!(tr(&s, 3 * M2 + 7 * K4), None);
    assert_eq!(tr(&s, 3 * M2 + 8 * K4), None);
    assert_eq!(
        tr(&s, 3 * M2 + 9 * K4).map(|t| (t.0, t.2)),
        Some((G1 + 3 * M2 + 9 * K4, PageSize::Size4K))
    );
    assert_eq!(
        tr(&s, 5 * M2).map(|t| (t.0, t.2)),
        Some((G1 + 5 * M2, PageSize::Size2M))
    );
    assert_eq!(tr(&s, G1 - 1).map(|t| t.0), Some(2 * G1 - 1));
}

#[test]
fn unmap_everything_frees_tables() {
    let mut s = space(PageSizes::ALL);
    s.map(g(M2 - K4), h(0x4000_0000), G1 + 3 * M2, EptPerms::RW, WB)
        .unwrap();
    assert!(s.table_count() > 3);
    let _ = s.unmap(g(M2 - K4), G1 + 3 * M2).unwrap();
    assert_eq!(s.table_count(), 1, "only the PML4 remains");
    assert_eq!(s.frames().live(), 1);
    assert_eq!(tr(&s, M2), None);
}

#[test]
fn protect_changes_permissions_with_split() {
    let mut s = space(PageSizes::ALL);
    s.map(g(0), h(0), 2 * M2, EptPerms::RWX, WB).unwrap();
    let _ = s.protect(g(M2 + K4), K4, EptPerms::READ).unwrap();
    assert_eq!(tr(&s, M2 + K4).map(|t| t.1), Some(EptPerms::READ));
    assert_eq!(tr(&s, M2).map(|t| t.1), Some(EptPerms::RWX));
    assert_eq!(tr(&s, M2 + 2 * K4).map(|t| t.1), Some(EptPerms::RWX));
    assert_eq!(
        tr(&s, 0).map(|t| (t.1, t.2)),
        Some((EptPerms::RWX, PageSize::Size2M)),
        "other 2M page untouched"
    );
    // A whole large page changes without a split.
    let before = s.table_count();
    let _ = s.protect(g(0), M2, EptPerms::RX).unwrap();
    assert_eq!(s.table_count(), before);
    assert_eq!(
        tr(&s, 0).map(|t| (t.1, t.2)),
        Some((EptPerms::RX, PageSize::Size2M))
    );
    assert_eq!(
        s.protect(g(0), K4, EptPerms::WRITE),
        Err(EptError::InvalidPerms(EptPerms::WRITE))
    );
    assert_eq!(
        s.protect(g(2 * M2), K4, EptPerms::READ),
        Err(EptError::NotMapped { gpa: g(2 * M2) })
    );
}

#[test]
fn rejects_bad_requests_without_change() {
    let mut s = space(PageSizes::ALL);
    s.map(g(0x10_0000), h(0x10_0000), 4 * K4, EptPerms::RW, WB)
        .unwrap();
    let tables = s.table_count();
    // Overlap, full and partial, reports the first mapped address.
    assert_eq!(
        s.map(g(0x10_0000), h(0), K4, EptPerms::RW, WB),
        Err(EptError::Overlap { gpa: g(0x10_0000) })
    );
    assert_eq!(
        s.map(g(0xF_E000), h(0), 4 * K4, EptPerms::RW, WB),
        Err(EptError::Overlap { gpa: g(0x10_0000) })
    );
    assert_eq!(
        tr(&s, 0xF_E000),
        None,
        "nothing of the refused request was mapped"
    );
    // Misalignment.
    assert!(matches!(
        s.map(g(0x1001), h(0), K4, EptPerms::RW, WB),
        Err(EptError::Misaligned { .. })
    ));
    assert!(matches!(
        s.map(g(0), h(0x10), K4, EptPerms::RW, WB),
        Err(EptError::Misaligned { .. })
    ));
    assert!(matches!(
        s.map(g(0), h(0), 100, EptPerms::RW, WB),
        Err(EptError::Misaligned { .. })
    ));
    assert!(matches!(
        s.unmap(g(0x10_0800), K4),
        Err(EptError::Misaligned { .. })
    ));
    assert_eq!(
        s.map(g(0), h(0), 0, EptPerms::RW, WB),
        Err(EptError::EmptyRange)
    );
    // Overflow and out-of-range.
    let top = GuestPhysAddr::LIMIT;
    assert!(matches!(
        s.map(g(top - K4), h(0), 2 * K4, EptPerms::RW, WB),
        Err(EptError::Address(_))
    ));
    assert!(matches!(
        s.map(g(0), h(HostPhysAddr::LIMIT - K4), 2 * K4, EptPerms::RW, WB),
        Err(EptError::Address(_))
    ));
    assert!(matches!(
        s.map(g(0), h(0), !0xFFF, EptPerms::RW, WB),
        Err(EptError::Address(_))
    ));
    // The very last page is mappable.
    s.map(g(top - K4), h(0), K4, EptPerms::READ, WB).unwrap();
    assert_eq!(tr(&s, top - 1).map(|t| t.0), Some(0xFFF));
    // Invalid permissions.
    assert_eq!(
        s.map(g(0), h(0), K4, EptPerms::empty(), WB),
        Err(EptError::InvalidPerms(EptPerms::empty()))
    );
    assert_eq!(
        s.map(g(0), h(0), K4, EptPerms::WRITE, WB),
        Err(EptError::InvalidPerms(EptPerms::WRITE))
    );
    // Unmap of a partly unmapped range changes nothing.
    assert_eq!(
        s.unmap(g(0x10_2000), 4 * K4),
        Err(EptError::NotMapped { gpa: g(0x10_4000) })
    );
    assert_eq!(tr(&s, 0x10_2000).map(|t| t.0), Some(0x10_2000));
    let _ = s.unmap(g(top - K4), K4).unwrap();
    assert_eq!(s.table_count(), tables);
}

#[test]
fn frame_exhaustion_is_an_error_and_rolls_back() {
    // Root + PDPT + PD + 2 PTs needed; allow only 4 frames.
    let mut s =
        GuestAddressSpace::new(HeapFrames::new(0x1000_0000, 4), PageSizes::ONLY_4K).unwrap();
    let r = s.map(g(M2 - 2 * K4), h(0), 4 * K4, EptPerms::RW, WB);
    assert_eq!(r, Err(EptError::OutOfFrames));
    assert_eq!(
        tr(&s, M2 - 2 * K4),
        None,
        "the pages mapped before exhaustion were undone"
    );
    assert_eq!(s.table_count(), 1, "and their emptied tables freed");
    assert!(GuestAddressSpace::new(HeapFrames::new(0, 0), PageSizes::ALL).is_err());

    // A split that cannot get a frame leaves the large page intact.
    let mut s = GuestAddressSpace::new(HeapFrames::new(0x1000_0000, 3), PageSizes::ALL).unwrap();
    s.map(g(0), h(0), M2, EptPerms::RW, WB).unwrap();
    assert_eq!(s.unmap(g(K4), K4), Err(EptError::OutOfFrames));
    assert_eq!(tr(&s, K4), Some((K4, EptPerms::RW, PageSize::Size2M)));
}

#[test]
fn translate_range_checks_contiguity_and_permissions() {
    let mut s = space(PageSizes::ALL);
    s.map(g(0), h(0x100_0000), 3 * K4, EptPerms::RW, WB)
        .unwrap();
    s.map(g(3 * K4), h(0x900_0000), K4, EptPerms::RW, WB)
        .unwrap();
    assert_eq!(
        s.translate_range(g(0x800), 2 * K4, EptPerms::WRITE),
        Ok(h(0x100_0800))
    );
    assert_eq!(
        s.translate_range(g(0x800), 0, EptPerms::READ),
        Ok(h(0x100_0800))
    );
    assert_eq!(
        s.translate_range(g(2 * K4), 2 * K4, EptPerms::READ),
        Err(EptError::NotMapped { gpa: g(3 * K4) })
    );
    assert_eq!(
        s.translate_range(g(3 * K4), K4 + 1, EptPerms::READ),
        Err(EptError::NotMapped { gpa: g(4 * K4) })
    );
    assert_eq!(
        s.translate_range(g(0), K4, EptPerms::EXECUTE),
        Err(EptError::InvalidPerms(EptPerms::RW))
    );
    assert!(matches!(
        s.translate_range(g(0), u64::MAX, EptPerms::READ),
        Err(EptError::Address(_))
    ));
}

#[test]
fn accessed_dirty_flags_are_visible() {
    let mut s = space(PageSizes::ALL);
    s.map(g(0), h(0), K4, EptPerms::RW, WB).unwrap();
    assert_eq!(s.accessed_dirty(g(0)), Ok(Some((false, false))));
    // Find the PT by walking: PML4[0] → PDPT[0] → PD[0] → PT; poke A/D into PT[0] as the CPU would.
    let mut table = s.root();
    for _ in 0..3 {
        let e = s.frames().table(table).unwrap()[0].load(std::sync::atomic::Ordering::SeqCst);
        table = h(e & crate::entry::ADDR_MASK);
    }
    assert!(s
        .frames()
        .poke(table, 0, crate::entry::ACCESSED | crate::entry::DIRTY));
    assert_eq!(s.accessed_dirty(g(0)), Ok(Some((true, true))));
    assert_eq!(s.accessed_dirty(g(K4)), Ok(None));
}

#[test]
fn teardown_returns_every_frame() {
    let mut s = space(PageSizes::ALL);
    s.map(g(0), h(0), G1 + M2 + K4, EptPerms::RW, WB).unwrap();
    s.map(g(1 << 40), h(0), K4, EptPerms::RW, WB).unwrap();
    assert!(s.frames().live() > 4);
    let frames = s.teardown();
    assert_eq!(frames.live(), 0);
}

use crate::frame::FrameSource;

/// Random map/unmap/protect against a page-granular reference model.
#[test]
fn randomized_against_reference_model() {
    const WINDOW: u64 = 64 << 20; // 64 MiB: 32 possible 2 MiB pages
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut s = GuestAddressSpace::new(HeapFrames::new(1 << 44, 100_000), PageSizes::ALL).unwrap();
    let mut model: BTreeMap<u64, (u64, EptPerms)> = BTreeMap::new();
    let perms = [EptPerms::READ, EptPerms::RW, EptPerms::RX, EptPerms::RWX];
    let mut ok = [0u32; 3];
    let mut large_seen = 0u32;
    for step in 0..3000 {
        let pages = WINDOW / K4;
        let op = rnd(3);
        let (start, len) = if op != 0 && !model.is_empty() && rnd(2) == 0 {
            // Aim at something mapped so unmap/protect often succeed (and split large pages).
            let nth = rnd(model.len() as u64) as usize;
            let page = model.keys().nth(nth).copied().unwrap_or(0);
            let n = (1 + rnd(8)).min(pages - page);
            (page * K4, n * K4)
        } else if rnd(3) == 0 {
            // 2M-aligned, whole 2M pages: exercises large pages and splits.
            let n = 1 + rnd(2);
            (rnd(pages / 512 - n) * M2, n * M2)
        } else {
            let n = 1 + if rnd(4) == 0 { rnd(700) } else { rnd(32) };
            (rnd(pages - n) * K4, n * K4)
        };
        let first = start / K4;
        let count = len / K4;
        let all_mapped = (first..first + count).all(|p| model.contains_key(&p));
        let none_mapped = (first..first + count).all(|p| !model.contains_key(&p));
        let p = perms[rnd(4) as usize];
        match op {
            0 => {
                // Keep HPA congruent modulo 2M half of the time so 2M pages get used.
                let hpa = if rnd(2) == 0 {
                    (start % M2) + rnd(1 << 10) * M2
                } else {
                    rnd(1 << 20) * K4
                };
                let r = s.map(g(start), h(hpa), len, p, WB);
                assert_eq!(
                    r.is_ok(),
                    none_mapped,
                    "step {step}: map {start:#x}+{len:#x}: {r:?}"
                );
                if r.is_ok() {
                    ok[0] += 1;
                    for i in 0..count {
                        model.insert(first + i, (hpa + i * K4, p));
                    }
                }
            }
            1 => {
                let r = s.unmap(g(start), len);
                assert_eq!(
                    r.is_ok(),
                    all_mapped,
                    "step {step}: unmap {start:#x}+{len:#x}: {r:?}"
                );
                if r.is_ok() {
                    ok[1] += 1;
                    for i in 0..count {
                        model.remove(&(first + i));
                    }
                }
            }
            _ => {
                let r = s.protect(g(start), len, p);
                assert_eq!(
                    r.is_ok(),
                    all_mapped,
                    "step {step}: protect {start:#x}+{len:#x}: {r:?}"
                );
                if r.is_ok() {
                    ok[2] += 1;
                    for i in 0..count {
                        if let Some(e) = model.get_mut(&(first + i)) {
                            e.1 = p;
                        }
                    }
                }
            }
        }
        // Spot checks every step, a full sweep now and then.
        let samples: std::vec::Vec<u64> = if step % 500 == 499 {
            (0..pages).collect()
        } else {
            (0..32).map(|_| rnd(pages)).collect()
        };
        for page in samples {
            let off = rnd(K4);
            let t = s.translate(g(page * K4 + off)).unwrap();
            large_seen += u32::from(t.is_some_and(|t| t.page_size == PageSize::Size2M));
            let got = t.map(|t| (t.hpa.as_u64(), t.perms));
            let want = model.get(&page).map(|&(hpa, p)| (hpa + off, p));
            assert_eq!(got, want, "step {step}: page {page:#x}");
        }
    }
    // The run exercised every operation and large pages, not just refusals.
    assert!(
        ok.iter().all(|&n| n > 100),
        "successful map/unmap/protect: {ok:?}"
    );
    assert!(large_seen > 20, "2M translations seen: {large_seen}");
    // Everything unmapped again leaves only the root.
    let mapped: std::vec::Vec<u64> = model.keys().copied().collect();
    for page in mapped {
        let _ = s.unmap(g(page * K4), K4).unwrap();
    }
    assert_eq!(s.table_count(), 1);
    assert_eq!(s.frames().live(), 1);
    let _ = s.frames().table(s.root()).unwrap();
}
