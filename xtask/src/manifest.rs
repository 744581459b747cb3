//! `cargo xtask config check|compile`: the tenant configuration (`config/tenants.toml`) parsed,
//! validated and compiled into the binary manifest the hypervisor reads at boot.
//!
//! Parsing is strict (`deny_unknown_fields`); every value keeps its span, so an error names the
//! file, the line and the field: `config/tenants.toml:14: tenant #1 `bob`: memory_mib: 4096 is
//! outside 2..=1024`. The range and cross-tenant rules are not repeated here: the parsed
//! configuration becomes a [`hypervisor::manifest::Manifest`] and goes through
//! [`hypervisor::manifest::validate`], the function the hypervisor itself runs on the decoded
//! bytes; its error names the tenant and field, which this module maps back to a line. What
//! only the image builder can know is checked here: that each guest exists under `guests/`, that
//! a Linux tenant's kernel and initramfs files exist and are what they claim to be, and (by
//! [`Compiled::check_models`], once the image's models are chosen) that every model a tenant
//! lists in `models` is among the models the image carries.
//!
//! A tenant is a Rust guest (`guest = "NAME"`, the default `kind = "rust"`) or a Linux kernel
//! (`kind = "linux"`): `kernel` (a vmlinux or bzImage) and `initrd` are file paths, relative to
//! the configuration file's directory, delivered as modules named after the files
//! (`kernel:FILE`, `initrd:FILE`, [`Compiled::modules`]); `cmdline` is the kernel command line
//! (default [`crate::image::LINUX_CMDLINE`]). It gets its weight, memory and quotas like any
//! tenant; it runs one vCPU and takes no `args` and no `devices`.

use hypervisor::manifest::{self, Flags, LinuxBoot, Machine, Manifest, ManifestError, Quota, Tenant};
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    machine: Spanned<MachineToml>,
    #[serde(default)]
    tenants: Vec<Spanned<TenantToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineToml {
    cpus: Spanned<u16>,
    memory_mib: Spanned<u32>,
    kv_cache_mib: Spanned<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantToml {
    name: Spanned<String>,
    /// `"rust"` (the default) or `"linux"`.
    #[serde(default)]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    guest: Option<Spanned<String>>,
    /// Linux: the kernel file (vmlinux or bzImage), relative to the configuration's directory.
    #[serde(default)]
    kernel: Option<Spanned<String>>,
    /// Linux: the initramfs file.
    #[serde(default)]
    initrd: Option<Spanned<String>>,
    /// Linux: the kernel command line.
    #[serde(default)]
    cmdline: Option<Spanned<String>>,
    #[serde(default)]
    args: Option<Spanned<String>>,
    memory_mib: Spanned<u32>,
    #[serde(default)]
    vcpus: Option<Spanned<u8>>,
    #[serde(default)]
    cpus: Option<Spanned<Vec<u8>>>,
    #[serde(default)]
    models: Option<Spanned<Vec<String>>>,
    weight: Spanned<u16>,
    cpu_budget_ms: Spanned<u32>,
    quota: Spanned<QuotaToml>,
    #[serde(default)]
    policy: Option<Spanned<PolicyToml>>,
    /// PCI devices passed through: `"bb:dd.f"` or `"vendor:device"`.
    #[serde(default)]
    devices: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaToml {
    registered_mib: Spanned<u32>,
    inflight_ops: Spanned<u32>,
    kv_cache_mib: Spanned<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyToml {
    #[serde(default)]
    user_mode_hypercalls: Option<Spanned<bool>>,
    #[serde(default)]
    completion_interrupts: Option<Spanned<bool>>,
    /// Testing only: pass devices through even without an IOMMU.
    #[serde(default)]
    passthrough_without_iommu: Option<Spanned<bool>>,
}

/// A checked configuration: the manifest and its encoding.
#[derive(Debug)]
pub struct Compiled {
    pub manifest: Manifest,
    pub bytes: Vec<u8>,
    /// Files the image must carry besides the guests' ELFs, with their module names: each Linux
    /// tenant's kernel (`kernel:FILE`) and initramfs (`initrd:FILE`), each file once.
    pub modules: Vec<(String, PathBuf)>,
    /// The file as errors name it, and the line of each tenant's `models` field (of its
    /// `[[tenants]]` table when it has none), for [`Compiled::check_models`].
    file: String,
    models_lines: Vec<usize>,
}

impl Compiled {
    /// The Rust guests the tenants name, each once, sorted (their ELFs go in as `guest:NAME`).
    pub fn guests(&self) -> Vec<String> {
        let mut g: Vec<String> = self.manifest.tenants.iter().filter(|t| t.linux.is_none()).map(|t| t.guest.clone()).collect();
        g.sort();
        g.dedup();
        g
    }
}

impl Compiled {
    /// Checks, at image time, that every model a tenant lists is among `image_models`, the
    /// names of the models the image carries (its `model:NAME` modules): the hypervisor lets a
    /// tenant open only the models it lists, by name, so a name the image lacks would leave that
    /// tenant without the model. The error names the file, the line and the field.
    pub fn check_models(&self, image_models: &[&str]) -> Result<(), String> {
        for (i, t) in self.manifest.tenants.iter().enumerate() {
            if let Some(m) = t.models.iter().find(|m| !image_models.contains(&m.as_str())) {
                return Err(format!(
                    "{}:{}: tenant #{i} `{}`: models: `{m}` is not among the image's models ({}): the tenant could not open it",
                    self.file,
                    self.models_lines[i],
                    t.name,
                    if image_models.is_empty() { "none".to_string() } else { image_models.join(", ") }
                ));
            }
        }
        Ok(())
    }

    /// A human summary, one line per tenant.
    pub fn summary(&self) -> String {
        let m = &self.manifest;
        let mut s = format!(
            "{} tenants on {} CPUs, {} of {} MiB of memory, {} of {} MiB of KV cache; manifest {} bytes, CRC-32 {:#010x}\n",
            m.tenants.len(),
            m.machine.cpus,
            m.tenants.iter().map(|t| t.memory_mib).sum::<u32>(),
            m.machine.memory_mib,
            m.tenants.iter().map(|t| t.quota.kv_cache_mib).sum::<u32>(),
            m.machine.kv_cache_mib,
            self.bytes.len(),
            u32::from_le_bytes([self.bytes[20], self.bytes[21], self.bytes[22], self.bytes[23]]),
        );
        for t in &m.tenants {
            let pin = if t.cpus.is_empty() { "unpinned".to_string() } else { format!("CPUs {:?}", t.cpus) };
            let what = match &t.linux {
                None => format!("guest {:<10}", t.guest),
                Some(l) => format!("linux {:<10}", l.kernel),
            };
            s += &format!(
                "  {:<12} {what} {:>4} MiB, {} vCPU {pin}, weight {}, budget {} ms, quota {} MiB registered / {} ops / {} MiB KV, models {:?}{}\n",
                t.name,
                t.memory_mib,
                t.vcpus,
                t.weight,
                t.cpu_budget_ms,
                t.quota.registered_mib,
                t.quota.inflight_ops,
                t.quota.kv_cache_mib,
                t.models,
                if t.flags.contains(Flags::USER_MODE_HYPERCALLS) { ", user-mode hypercalls" } else { "" },
            );
            if !t.devices.is_empty() {
                let warn = if t.flags.contains(Flags::PASSTHROUGH_WITHOUT_IOMMU) { " (allowed without an IOMMU: testing only)" } else { "" };
                s += &format!("  {:<12} devices {}{warn}\n", "", t.devices.join(", "));
            }
        }
        s
    }
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).unwrap_or(text).bytes().filter(|&b| b == b'\n').count() + 1
}

/// Which `[[tenants]]` table (by index) the byte offset `at` falls in, by its headers.
fn tenant_at(text: &str, at: usize) -> Option<usize> {
    let mut offset = 0;
    let mut index = None;
    for line in text.split_inclusive('\n') {
        if offset > at {
            break;
        }
        if line.trim_start().starts_with("[[tenants]]") {
            index = Some(index.map_or(0, |i| i + 1));
        }
        offset += line.len();
    }
    index
}

/// The span of `field` (a manifest error's field name) in tenant `t`.
fn tenant_field_span(t: &Spanned<TenantToml>, field: &str) -> Range<usize> {
    let v = t.get_ref();
    let opt = |s: Option<Range<usize>>| s.unwrap_or_else(|| t.span());
    match field {
        "name" => v.name.span(),
        "guest" => opt(v.guest.as_ref().map(Spanned::span)),
        "kind" => opt(v.kind.as_ref().map(Spanned::span)),
        "kernel" => opt(v.kernel.as_ref().map(Spanned::span)),
        "initrd" => opt(v.initrd.as_ref().map(Spanned::span)),
        "cmdline" => opt(v.cmdline.as_ref().map(Spanned::span)),
        "args" => opt(v.args.as_ref().map(Spanned::span)),
        "memory_mib" => v.memory_mib.span(),
        "vcpus" => opt(v.vcpus.as_ref().map(Spanned::span)),
        "cpus" => opt(v.cpus.as_ref().map(Spanned::span)),
        "models" => opt(v.models.as_ref().map(Spanned::span)),
        "weight" => v.weight.span(),
        "cpu_budget_ms" => v.cpu_budget_ms.span(),
        "quota.registered_mib" => v.quota.get_ref().registered_mib.span(),
        "quota.inflight_ops" => v.quota.get_ref().inflight_ops.span(),
        "quota.kv_cache_mib" => v.quota.get_ref().kv_cache_mib.span(),
        "flags" => opt(v.policy.as_ref().map(Spanned::span)),
        "devices" => opt(v.devices.as_ref().map(Spanned::span)),
        _ => t.span(),
    }
}

/// The module name of a Linux tenant's file: its file name (the manifest's name rules apply).
fn module_name(path: &str) -> String {
    Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or(path).to_string()
}

fn to_manifest(f: &FileToml) -> Manifest {
    let m = f.machine.get_ref();
    let machine = Machine { cpus: *m.cpus.get_ref(), memory_mib: *m.memory_mib.get_ref(), kv_cache_mib: *m.kv_cache_mib.get_ref() };
    let tenants = f
        .tenants
        .iter()
        .map(|t| {
            let t = t.get_ref();
            let q = t.quota.get_ref();
            let cpus = t.cpus.as_ref().map(|c| c.get_ref().clone()).unwrap_or_default();
            let policy = t.policy.as_ref().map(Spanned::get_ref);
            let flag = |get: fn(&PolicyToml) -> &Option<Spanned<bool>>| policy.and_then(|p| get(p).as_ref()).is_some_and(|b| *b.get_ref());
            let text = |o: &Option<Spanned<String>>| o.as_ref().map(|v| v.get_ref().clone());
            let linux = (text(&t.kind).as_deref() == Some("linux")).then(|| LinuxBoot {
                kernel: text(&t.kernel).map(|k| module_name(&k)).unwrap_or_default(),
                initrd: text(&t.initrd).map(|k| module_name(&k)).unwrap_or_default(),
                cmdline: text(&t.cmdline).unwrap_or_else(|| crate::image::LINUX_CMDLINE.to_string()),
            });
            Tenant {
                name: t.name.get_ref().clone(),
                guest: text(&t.guest).unwrap_or_default(),
                args: t.args.as_ref().map(|a| a.get_ref().clone()).unwrap_or_default(),
                memory_mib: *t.memory_mib.get_ref(),
                // Without `vcpus`, one per pinned CPU, or one.
                vcpus: t.vcpus.as_ref().map_or(cpus.len().clamp(1, 255) as u8, |v| *v.get_ref()),
                cpus,
                models: t.models.as_ref().map(|m| m.get_ref().clone()).unwrap_or_default(),
                quota: Quota { registered_mib: *q.registered_mib.get_ref(), inflight_ops: *q.inflight_ops.get_ref(), kv_cache_mib: *q.kv_cache_mib.get_ref() },
                weight: *t.weight.get_ref(),
                flags: Flags::empty()
                    .with(Flags::USER_MODE_HYPERCALLS, flag(|p| &p.user_mode_hypercalls))
                    .with(Flags::COMPLETION_INTERRUPTS, flag(|p| &p.completion_interrupts))
                    .with(Flags::PASSTHROUGH_WITHOUT_IOMMU, flag(|p| &p.passthrough_without_iommu)),
                cpu_budget_ms: *t.cpu_budget_ms.get_ref(),
                devices: t.devices.as_ref().map(|d| d.get_ref().clone()).unwrap_or_default(),
                linux,
            }
        })
        .collect();
    Manifest { machine, tenants }
}

/// The names of the guests under `guests_dir` (directories with a Cargo.toml).
fn known_guests(guests_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(guests_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("Cargo.toml").is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Parses, validates and compiles `text` (the contents of `file`, named in errors); guests must
/// exist as `guests_dir/NAME/Cargo.toml`; a Linux tenant's files are found relative to `file`'s
/// directory.
pub fn compile(file: &str, text: &str, guests_dir: &Path) -> Result<Compiled, String> {
    compile_in(file, text, guests_dir, Path::new(file).parent().unwrap_or(Path::new(".")))
}

/// Whether `bytes` start like a kernel the hypervisor boots: an x86-64 ELF (vmlinux) or a
/// bzImage (the `HdrS` setup header signature at 0x202, Linux boot protocol).
fn kernel_format(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() >= 20 && bytes[..4] == *b"\x7fELF" && bytes[4] == 2 && u16::from_le_bytes([bytes[18], bytes[19]]) == 62 {
        Some("ELF64 x86-64 vmlinux")
    } else if bytes.get(0x202..0x206) == Some(b"HdrS") {
        Some("bzImage")
    } else {
        None
    }
}

/// [`compile`], with Linux tenants' relative paths taken from `base`.
pub fn compile_in(file: &str, text: &str, guests_dir: &Path, base: &Path) -> Result<Compiled, String> {
    let parsed: FileToml = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        let context = match tenant_at(text, at) {
            Some(i) => format!("tenant #{i}: "),
            None => String::new(),
        };
        format!("{file}:{}: {context}{}", line_of(text, at), e.message().trim_end())
    })?;
    // The kind and the fields each kind needs, before the shared rules.
    for (i, t) in parsed.tenants.iter().enumerate() {
        let v = t.get_ref();
        let at = |span: Range<usize>, field: &str, what: String| format!("{file}:{}: tenant #{i} `{}`: {field}: {what}", line_of(text, span.start), v.name.get_ref());
        let linux = match v.kind.as_ref() {
            None => false,
            Some(k) if k.get_ref() == "rust" => false,
            Some(k) if k.get_ref() == "linux" => true,
            Some(k) => return Err(at(k.span(), "kind", format!("unknown kind `{}` (\"rust\", the default, or \"linux\")", k.get_ref()))),
        };
        if linux {
            if v.kernel.is_none() {
                return Err(at(t.span(), "kernel", "missing: a Linux tenant names its kernel file (vmlinux or bzImage)".into()));
            }
        } else {
            if v.guest.is_none() {
                return Err(at(t.span(), "guest", "missing: a Rust tenant names its guest (or set kind = \"linux\")".into()));
            }
            for (field, value) in [("kernel", &v.kernel), ("initrd", &v.initrd), ("cmdline", &v.cmdline)] {
                if let Some(value) = value {
                    return Err(at(value.span(), field, "not for a Rust guest tenant (only kind = \"linux\" boots a kernel)".into()));
                }
            }
        }
    }
    let m = to_manifest(&parsed);
    let locate = |e: &ManifestError| -> String {
        let span = match (&e.tenant, e.field) {
            (Some((i, _)), field) => parsed.tenants.get(*i).map_or(0..0, |t| tenant_field_span(t, field)),
            (None, "machine.cpus") => parsed.machine.get_ref().cpus.span(),
            (None, "machine.memory_mib") => parsed.machine.get_ref().memory_mib.span(),
            (None, "machine.kv_cache_mib") => parsed.machine.get_ref().kv_cache_mib.span(),
            (None, _) => parsed.tenants.first().map_or(parsed.machine.span(), Spanned::span),
        };
        format!("{file}:{}: {e}", line_of(text, span.start))
    };
    manifest::validate(&m).map_err(|e| locate(&e))?;
    let guests = known_guests(guests_dir);
    let mut modules: Vec<(String, PathBuf)> = Vec::new();
    for (i, t) in parsed.tenants.iter().enumerate() {
        let v = t.get_ref();
        if m.tenants[i].linux.is_some() {
            let at = |span: Range<usize>, field: &str, what: String| format!("{file}:{}: tenant #{i} `{}`: {field}: {what}", line_of(text, span.start), v.name.get_ref());
            for (field, kind, value) in [("kernel", "kernel", &v.kernel), ("initrd", "initrd", &v.initrd)] {
                let Some(value) = value else { continue };
                let path = base.join(value.get_ref());
                let bytes = std::fs::read(&path).map_err(|e| at(value.span(), field, format!("cannot read {}: {e}", path.display())))?;
                if field == "kernel" && kernel_format(&bytes).is_none() {
                    return Err(at(value.span(), field, format!("{} is neither an x86-64 ELF vmlinux nor a bzImage (no `HdrS` setup header)", path.display())));
                }
                let name = format!("{kind}:{}", module_name(value.get_ref()));
                match modules.iter().find(|(n, _)| *n == name) {
                    Some((_, other)) if *other != path => {
                        return Err(at(value.span(), field, format!("{} has the file name of another tenant's {field}, {} (each module is named after its file)", path.display(), other.display())));
                    }
                    Some(_) => {}
                    None => modules.push((name, path)),
                }
            }
            continue;
        }
        let Some(g) = v.guest.as_ref() else { continue };
        let g = g.get_ref();
        if !guests_dir.join(g).join("Cargo.toml").is_file() {
            return Err(format!(
                "{file}:{}: tenant #{i} `{}`: guest: no guest `{g}` (no {}); the guests are: {}",
                line_of(text, v.guest.as_ref().map_or(t.span().start, |g| g.span().start)),
                t.get_ref().name.get_ref(),
                guests_dir.join(g).join("Cargo.toml").display(),
                guests.join(", ")
            ));
        }
    }
    let bytes = manifest::encode(&m).map_err(|e| locate(&e))?;
    // The hypervisor's own check of what it will receive.
    let back = manifest::decode_and_validate(&bytes).map_err(|e| format!("{file}: the encoded manifest does not decode: {e}"))?;
    if back != m {
        return Err(format!("{file}: the encoded manifest decodes to something else"));
    }
    let models_lines = parsed.tenants.iter().map(|t| line_of(text, tenant_field_span(t, "models").start)).collect();
    Ok(Compiled { manifest: m, bytes, modules, file: file.to_string(), models_lines })
}

/// Reads and compiles a configuration file against the workspace's guests.
pub fn compile_file(path: &Path) -> Result<Compiled, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let shown = path.strip_prefix(crate::root()).unwrap_or(path);
    let base = path.parent().unwrap_or(Path::new("."));
    compile_in(&shown.display().to_string(), &text, &crate::root().join("guests"), base)
}

pub fn default_config() -> PathBuf {
    crate::root().join("config").join("tenants.toml")
}

/// `cargo xtask config check [FILE]` / `config compile [FILE] [OUT]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let file = args.get(1).map_or_else(default_config, PathBuf::from);
    match args.first().map(String::as_str) {
        Some("check") if args.len() <= 2 => {
            let c = compile_file(&file)?;
            print!("{}: ok\n{}", file.strip_prefix(crate::root()).unwrap_or(&file).display(), c.summary());
            Ok(())
        }
        Some("compile") if args.len() <= 3 => {
            let c = compile_file(&file)?;
            let out = args.get(2).map_or_else(|| crate::image::build_dir().join("manifest.bin"), PathBuf::from);
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(&out, &c.bytes).map_err(|e| format!("{}: {e}", out.display()))?;
            println!("{}: {} bytes", out.display(), c.bytes.len());
            Ok(())
        }
        _ => Err("usage: cargo xtask config check [FILE] | config compile [FILE] [OUT] (FILE defaults to config/tenants.toml)".into()),
    }
}

#[cfg(test)]
mod tests;
