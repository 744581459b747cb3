//! Loading models from the NVMe model store (layout: `hypervisor::store`) into large-page
//! memory: header checked, each model read in chunks with progress on the log, its SHA-256
//! compared with the header's, its GGUF header parsed. A bad store or model is logged and left
//! out; the hypervisor carries on.

use super::dma::DmaBuffer;
use super::nvme::{Controller, DmaMap};
use alloc::string::String;
use alloc::vec::Vec;
use hypervisor::store::{self, Header, Sha256, HEADER_BYTES};

/// A model read from the store: its bytes stay in memory for the kernel's life.
#[allow(dead_code)] // for the engine's loader to pick up from `devices::MODELS`
pub struct StoredModel {
    pub name: String,
    pub bytes: &'static [u8],
    pub sha256: [u8; 32],
}

const LARGE_PAGE: u64 = 2 << 20;

/// Reads the store header; `None` (logged) if there is no usable store.
fn header(ctrl: &mut Controller, dma: &mut dyn DmaMap) -> Option<Header> {
    let buf = DmaBuffer::new(HEADER_BYTES as u64, 4096)?;
    let ok = dma.map(buf.phys(), buf.len(), true).is_ok();
    let bs = u64::from(ctrl.namespace.block_size);
    let read = ok && ctrl.read(0, &buf, 0, (HEADER_BYTES as u64).next_multiple_of(bs).min(buf.len())).is_ok();
    let _ = dma.unmap(buf.phys(), buf.len());
    if !read {
        log::error!("model store: cannot read the header block from nvme {}", ctrl.bdf);
        buf.free();
        return None;
    }
    let mut h = [0u8; HEADER_BYTES];
    buf.read_into(0, &mut h)?;
    buf.free();
    match Header::parse(&h, ctrl.namespace.bytes()) {
        Ok(h) => Some(h),
        Err(e) => {
            log::error!("model store: {e}: no models loaded from nvme {}; carrying on without them", ctrl.bdf);
            None
        }
    }
}

/// Reads every model of the store on `ctrl`. Models that fail are logged and left out.
pub fn load(ctrl: &mut Controller, dma: &mut dyn DmaMap) -> Vec<StoredModel> {
    let mut out = Vec::new();
    let Some(h) = header(ctrl, dma) else { return out };
    log::info!("model store: {} model(s) on nvme {}", h.entries.len(), ctrl.bdf);
    let bs = u64::from(ctrl.namespace.block_size);
    for e in &h.entries {
        log::info!("model store: {}: {} bytes at offset {:#x}, sha256 {}", e.name, e.len, e.offset, store::hex(&e.sha256));
        if e.offset % bs != 0 || bs > 4096 {
            log::error!("model store: {}: extent not aligned to the {bs}-byte blocks: left out", e.name);
            continue;
        }
        let padded = e.len.next_multiple_of(bs);
        let Some(buf) = DmaBuffer::new(padded, LARGE_PAGE) else {
            log::error!("model store: {}: no memory for {} bytes: left out", e.name, e.len);
            continue;
        };
        if dma.map(buf.phys(), buf.len(), true).is_err() {
            log::error!("model store: {}: cannot map the buffer for the controller: left out", e.name);
            buf.free();
            continue;
        }
        let start = crate::kernel::tsc::micros_since_boot();
        let mut done = 0u64;
        let mut next_report = 1u64;
        let mut failed = None;
        while done < padded {
            let n = (padded - done).min(ctrl.max_transfer / bs * bs);
            if let Err(err) = ctrl.read((e.offset + done) / bs, &buf, done, n) {
                failed = Some(err);
                break;
            }
            done += n;
            if done * 4 >= next_report * padded {
                log::info!("model store: {}: read {}% ({} of {} bytes)", e.name, done.min(e.len) * 100 / e.len, done.min(e.len), e.len);
                next_report = (done * 4 / padded) + 1;
            }
        }
        // The controller loses access before the CPU looks at the bytes.
        let unmapped = dma.unmap(buf.phys(), buf.len()).is_ok();
        if let Some(err) = failed {
            log::error!("model store: {}: read failed: {err:?}: left out", e.name);
            if unmapped {
                buf.free();
            }
            continue;
        }
        if !unmapped {
            log::error!("model store: {}: cannot take the buffer back from the controller: left out", e.name);
            continue;
        }
        let us = crate::kernel::tsc::micros_since_boot().saturating_sub(start).max(1);
        // SAFETY: the buffer's IOMMU mapping was removed and invalidated above and no command is
        // outstanding, so no device writes it while the slice lives.
        let bytes = unsafe { buf.as_slice() };
        let bytes = &bytes[..e.len as usize];
        let mut sha = Sha256::new();
        sha.update(bytes);
        let digest = sha.finish();
        if digest != e.sha256 {
            log::error!(
                "model store: {}: sha256 mismatch (read {}, header {}): left out",
                e.name,
                store::hex(&digest),
                store::hex(&e.sha256)
            );
            buf.free();
            continue;
        }
        log::info!(
            "model store: {}: {} bytes read in {} ms ({} KiB/s) into large-page memory at {:#x}; sha256 {} matches",
            e.name,
            e.len,
            us / 1000,
            e.len * 1_000_000 / us / 1024,
            buf.phys(),
            store::hex(&digest)
        );
        match engine::gguf::Gguf::parse(bytes) {
            Ok(g) => log::info!("model store: {}: GGUF with {} tensors, ready for the engine", e.name, g.tensors.len()),
            Err(err) => log::warn!("model store: {}: not a GGUF model ({err}); kept as raw bytes", e.name),
        }
        let (phys, _) = buf.leak();
        // SAFETY: the leaked buffer is never freed or written again, and no device can reach it
        // (unmapped above): `e.len` bytes at its direct-map address stay valid and immutable.
        let bytes: &'static [u8] =
            unsafe { core::slice::from_raw_parts((crate::kernel::memory::PHYS_OFFSET + phys) as *const u8, e.len as usize) };
        out.push(StoredModel { name: e.name.clone(), bytes, sha256: digest });
    }
    out
}
