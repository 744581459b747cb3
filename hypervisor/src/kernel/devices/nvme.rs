//! The NVMe driver: admin queue, identify controller and namespace 1, one I/O queue pair, reads
//! through PRP lists, polled completions. Every buffer the controller touches is mapped into its
//! IOMMU domain through a [`DmaMap`] first; nothing else is reachable by it.

use super::dma::DmaBuffer;
use super::mmio::{poll, Mmio};
use hypervisor::nvme::{
    self, aqa, reg, Capabilities, Command, Completion, ControllerId, CqRing, NamespaceError, NamespaceId, Prp2, SqRing,
    Status, CC_ENABLE, CSTS_FATAL, CSTS_READY,
};
use hypervisor::pci::Bdf;

/// How the driver makes memory reachable by the controller (an IOMMU domain or, without one,
/// plain physical addresses). Returns the bus address to program.
pub trait DmaMap {
    fn map(&mut self, phys: u64, len: u64, device_writes: bool) -> Result<u64, &'static str>;
    /// Takes the range away from the device again.
    fn unmap(&mut self, iova: u64, len: u64) -> Result<(), &'static str>;
}

// Fields are read through `Debug` when the error is logged.
#[allow(dead_code)]
#[derive(Debug)]
pub enum NvmeError {
    Map(hypervisor::paging::MapError),
    NoMemory,
    Dma(&'static str),
    /// CSTS.RDY did not reach `ready` within the controller's timeout.
    NotReady { ready: bool, csts: u32 },
    Fatal { csts: u32 },
    NoNvmCommandSet,
    /// A 4 KiB page size is not supported (MPSMIN > 0).
    PageSize(u64),
    Timeout { command: &'static str },
    Failed { command: &'static str, status: Status },
    Namespace(NamespaceError),
    Prp(nvme::PrpError),
    /// A read beyond the namespace or an unaligned destination.
    BadRead { lba: u64, blocks: u64 },
}

const ADMIN_ENTRIES: u16 = 32;
const IO_ENTRIES: u16 = 64;
const COMMAND_TIMEOUT_US: u64 = 5_000_000;

struct Queue {
    qid: u16,
    entries: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    /// The bus addresses the controller uses for them (what `DmaMap::map` returned).
    sq_bus: u64,
    cq_bus: u64,
    sq_ring: SqRing,
    cq_ring: CqRing,
}

/// A controller brought up with namespace 1 ready for reads.
pub struct Controller {
    pub bdf: Bdf,
    regs: Mmio,
    cap: Capabilities,
    admin: Queue,
    io: Queue,
    next_cid: u16,
    prp_list: DmaBuffer,
    prp_list_bus: u64,
    pub id: ControllerId,
    pub namespace: NamespaceId,
    /// The largest read in bytes one command may carry.
    pub max_transfer: u64,
}

impl Controller {
    /// Resets and enables the controller at `bar0`, identifies it, creates the I/O queue pair.
    pub fn init(bdf: Bdf, bar0: u64, bar_size: u64, dma: &mut dyn DmaMap) -> Result<Self, NvmeError> {
        let regs = Mmio::map(bar0, bar_size.clamp(0x2000, 1 << 20) as usize).map_err(NvmeError::Map)?;
        let cap = Capabilities(regs.read64(reg::CAP));
        if !cap.nvm_command_set() {
            return Err(NvmeError::NoNvmCommandSet);
        }
        if cap.min_page_size() != 4096 {
            return Err(NvmeError::PageSize(cap.min_page_size()));
        }
        let timeout = cap.timeout_ms().clamp(500, 60_000) * 1000;
        // Disable, then wait for RDY to clear.
        regs.write32(reg::CC, 0);
        if !poll(timeout, || regs.read32(reg::CSTS) & CSTS_READY == 0) {
            return Err(NvmeError::NotReady { ready: false, csts: regs.read32(reg::CSTS) });
        }
        let qmax = cap.max_queue_entries().min(u32::from(IO_ENTRIES)) as u16;
        let mk = |entries: u16, dma: &mut dyn DmaMap, qid: u16| -> Result<Queue, NvmeError> {
            let sq = DmaBuffer::new(64 * u64::from(entries), 4096).ok_or(NvmeError::NoMemory)?;
            let cq = DmaBuffer::new(16 * u64::from(entries), 4096).ok_or(NvmeError::NoMemory)?;
            let sq_bus = dma.map(sq.phys(), sq.len(), false).map_err(NvmeError::Dma)?;
            let cq_bus = dma.map(cq.phys(), cq.len(), true).map_err(NvmeError::Dma)?;
            Ok(Queue { qid, entries, sq, cq, sq_bus, cq_bus, sq_ring: SqRing::new(entries), cq_ring: CqRing::new(entries) })
        };
        let admin = mk(ADMIN_ENTRIES.min(qmax), dma, 0)?;
        let io = mk(qmax, dma, 1)?;
        let prp_list = DmaBuffer::new(4096, 4096).ok_or(NvmeError::NoMemory)?;
        let prp_list_bus = dma.map(prp_list.phys(), prp_list.len(), false).map_err(NvmeError::Dma)?;
        regs.write32(reg::INTMS, u32::MAX);
        regs.write32(reg::AQA, aqa(ADMIN_ENTRIES.min(qmax)));
        regs.write64(reg::ASQ, admin.sq_bus);
        regs.write64(reg::ACQ, admin.cq_bus);
        regs.write32(reg::CC, CC_ENABLE);
        if !poll(timeout, || regs.read32(reg::CSTS) & (CSTS_READY | CSTS_FATAL) != 0) {
            return Err(NvmeError::NotReady { ready: true, csts: regs.read32(reg::CSTS) });
        }
        let csts = regs.read32(reg::CSTS);
        if csts & CSTS_FATAL != 0 {
            return Err(NvmeError::Fatal { csts });
        }

        let mut c = Controller {
            bdf,
            regs,
            cap,
            admin,
            io,
            next_cid: 1,
            prp_list,
            prp_list_bus,
            id: ControllerId::parse(&[0; 4096]),
            namespace: NamespaceId { blocks: 0, block_size: 512 },
            max_transfer: 0,
        };
        let ident = DmaBuffer::new(4096, 4096).ok_or(NvmeError::NoMemory)?;
        let ident_bus = dma.map(ident.phys(), 4096, true).map_err(NvmeError::Dma)?;
        let mut page = [0u8; 4096];
        let cid = c.cid();
        c.admin_cmd(Command::identify(cid, 1, 0, ident_bus), "identify controller")?;
        ident.read_into(0, &mut page).ok_or(NvmeError::NoMemory)?;
        c.id = ControllerId::parse(&page);
        let cid = c.cid();
        c.admin_cmd(Command::identify(cid, 0, 1, ident_bus), "identify namespace")?;
        ident.read_into(0, &mut page).ok_or(NvmeError::NoMemory)?;
        c.namespace = NamespaceId::parse(&page).map_err(NvmeError::Namespace)?;
        // One list page of PRPs plus PRP1: at most 513 pages per command, and MDTS.
        let list_limit = (nvme::PRP_LIST_ENTRIES as u64) * 4096;
        c.max_transfer = c.id.max_transfer(4096).unwrap_or(list_limit).min(list_limit);

        let (cid, n) = (c.cid(), c.io.sq_ring_entries());
        c.admin_cmd(Command::create_cq(cid, 1, n, c.io.cq_bus), "create I/O completion queue")?;
        let cid = c.cid();
        c.admin_cmd(Command::create_sq(cid, 1, n, c.io.sq_bus, 1), "create I/O submission queue")?;
        Ok(c)
    }

    fn cid(&mut self) -> u16 {
        let c = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        c
    }

    fn admin_cmd(&mut self, cmd: Command, what: &'static str) -> Result<Completion, NvmeError> {
        let c = submit(&self.regs, self.cap, &mut self.admin, cmd, what)?;
        if !c.status.is_success() {
            return Err(NvmeError::Failed { command: what, status: c.status });
        }
        Ok(c)
    }

    /// Issues a read with caller-chosen PRPs and returns its completion, whatever its status
    /// (used to show the IOMMU stops DMA to addresses outside the domain).
    pub fn read_raw(&mut self, lba: u64, blocks: u32, prp1: u64, prp2: u64) -> Result<Completion, NvmeError> {
        let cid = self.cid();
        submit(&self.regs, self.cap, &mut self.io, Command::read(cid, 1, lba, blocks, prp1, prp2), "read")
    }

    /// Reads `len` bytes (a multiple of the block size) from `lba` into `dest` at `dest_off`
    /// (4 KiB-aligned). `dest` must be mapped device-writable in the controller's domain at its
    /// physical address (identity, as `Confined` maps).
    pub fn read(&mut self, lba: u64, dest: &DmaBuffer, dest_off: u64, len: u64) -> Result<(), NvmeError> {
        let bs = u64::from(self.namespace.block_size);
        let blocks = len / bs;
        let bad = NvmeError::BadRead { lba, blocks };
        if !len.is_multiple_of(bs) || !dest_off.is_multiple_of(4096) || len == 0 || len > self.max_transfer {
            return Err(bad);
        }
        if lba.checked_add(blocks).is_none_or(|e| e > self.namespace.blocks) || dest_off + len > dest.len() {
            return Err(bad);
        }
        let first = dest_off / 4096;
        let pages: alloc::vec::Vec<u64> = (0..len.div_ceil(4096)).map(|i| dest.page(first + i)).collect();
        let (prp1, prp2) = nvme::prps(&pages, 0, len).map_err(NvmeError::Prp)?;
        let prp2 = match prp2 {
            Prp2::None => 0,
            Prp2::Page(p) => p,
            Prp2::List(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    self.prp_list.write64(8 * i as u64, *e).ok_or(NvmeError::NoMemory)?;
                }
                self.prp_list_bus
            }
        };
        let c = self.read_raw(lba, blocks as u32, prp1, prp2)?;
        if !c.status.is_success() {
            return Err(NvmeError::Failed { command: "read", status: c.status });
        }
        Ok(())
    }

    pub fn version(&self) -> (u32, u32) {
        let v = self.regs.read32(reg::VS);
        (v >> 16, (v >> 8) & 0xff)
    }
}

impl Queue {
    fn sq_ring_entries(&self) -> u16 {
        self.entries
    }
}

/// Puts `cmd` on `q`, rings the doorbell and polls for its completion.
fn submit(regs: &Mmio, cap: Capabilities, q: &mut Queue, cmd: Command, what: &'static str) -> Result<Completion, NvmeError> {
    let (slot, tail) = q.sq_ring.push().ok_or(NvmeError::Timeout { command: what })?;
    for (i, d) in cmd.0.iter().enumerate() {
        q.sq.write32(u64::from(slot) * 64 + 4 * i as u64, *d).ok_or(NvmeError::NoMemory)?;
    }
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    regs.write32(cap.doorbell(q.qid, false), u32::from(tail));
    let mut done = None;
    let ok = poll(COMMAND_TIMEOUT_US, || {
        let at = u64::from(q.cq_ring.head()) * 16;
        let mut d = [0u32; 4];
        for (i, w) in d.iter_mut().enumerate() {
            *w = q.cq.read32(at + 4 * i as u64).unwrap_or(0);
        }
        let c = Completion::decode(d);
        if !q.cq_ring.is_new(&c) {
            return false;
        }
        let head = q.cq_ring.advance();
        q.sq_ring.set_head(c.sq_head);
        regs.write32(cap.doorbell(q.qid, true), u32::from(head));
        if c.cid == cmd.cid() {
            done = Some(c);
            true
        } else {
            false
        }
    });
    match (ok, done) {
        (true, Some(c)) => Ok(c),
        _ => Err(NvmeError::Timeout { command: what }),
    }
}
