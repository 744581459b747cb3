//! Static Linux programs for tensorvisor's Linux tenant (built by `xtask::linux::initramfs` into
//! the initramfs): `tv-generate` generates text with a hypervisor-loaded model through the SDK's
//! `linux` transport, `tv-hostile` tries what a Linux program must not be able to do.
//!
//! ## Arguments
//! The programs take the tenant arguments of the Rust `infer` guest (`prompt=ID,ID,..
//! max_tokens=N temp=T seed=S`, plus `model=NAME`, default `tiny.gguf`) as `key=value` words
//! in their own argv, and any key not given there from the kernel command line
//! (`/proc/cmdline`) as `tv.key=value`: `tv.prompt=2,302,275 tv.max_tokens=8`. The kernel
//! keeps dotted parameters to itself (it neither passes them to init nor complains), so one
//! `/init` serves every tenant and the tenant's configuration lives on its kernel command line.

/// The infer-style arguments: argv words win over `tv.` words of the kernel command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    pub model: String,
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub seed: u64,
}

impl Args {
    /// Parses `argv` (without the program name) and the kernel command line.
    pub fn parse(argv: &[String], cmdline: &str) -> Result<Self, String> {
        let get = |key: &str| -> Option<String> {
            let from_argv = argv.iter().rev().find_map(|w| w.strip_prefix(key)?.strip_prefix('='));
            let tv = format!("tv.{key}=");
            from_argv.map(str::to_string).or_else(|| cmdline.split_whitespace().rev().find_map(|w| w.strip_prefix(&tv)).map(str::to_string))
        };
        for w in argv {
            let key = w.split('=').next().unwrap_or("");
            if !w.contains('=') || !["model", "prompt", "max_tokens", "temp", "seed"].contains(&key) {
                return Err(format!("unknown argument {w:?} (want model=, prompt=, max_tokens=, temp=, seed=)"));
            }
        }
        let num = |key: &str, v: Option<String>| -> Result<Option<String>, String> {
            match v {
                Some(s) if s.is_empty() => Err(format!("{key}= is empty")),
                other => Ok(other),
            }
        };
        let prompt = match num("prompt", get("prompt"))? {
            Some(p) => p.split(',').map(|t| t.parse::<u32>().map_err(|e| format!("prompt token {t:?}: {e}"))).collect::<Result<Vec<_>, _>>()?,
            None => vec![2],
        };
        if prompt.is_empty() || prompt.len() > 512 {
            return Err(format!("prompt has {} tokens (1..=512)", prompt.len()));
        }
        let parse = |key: &str, default: &str| -> Result<String, String> { Ok(num(key, get(key))?.unwrap_or_else(|| default.to_string())) };
        let max_tokens: u32 = parse("max_tokens", "8")?.parse().map_err(|e| format!("max_tokens: {e}"))?;
        let temperature: f32 = parse("temp", "0")?.parse().map_err(|e| format!("temp: {e}"))?;
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(format!("temp {temperature} is not a non-negative number"));
        }
        let seed: u64 = parse("seed", "0")?.parse().map_err(|e| format!("seed: {e}"))?;
        Ok(Self { model: parse("model", "tiny.gguf")?, prompt, max_tokens, temperature, seed })
    }

    /// Reads the real argv and `/proc/cmdline` (absent: an empty command line).
    pub fn from_env() -> Result<Self, String> {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        Self::parse(&argv, &cmdline)
    }
}

/// Comma-separated token ids, the form the contract's `tokens=` line and the infer guest use.
pub fn ids(tokens: &[u32]) -> String {
    tokens.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn defaults_match_the_infer_guest() {
        let a = Args::parse(&[], "console=ttyS0 quiet").unwrap();
        assert_eq!(a, Args { model: "tiny.gguf".into(), prompt: vec![2], max_tokens: 8, temperature: 0.0, seed: 0 });
    }

    #[test]
    fn kernel_command_line_words_apply_and_argv_overrides_them() {
        let cmd = "console=ttyS0 tv.prompt=2,302,275 tv.max_tokens=4 tv.temp=0.9 tv.seed=7 panic=-1";
        let a = Args::parse(&[], cmd).unwrap();
        assert_eq!((a.prompt.as_slice(), a.max_tokens, a.temperature, a.seed), (&[2, 302, 275][..], 4, 0.9, 7));
        let b = Args::parse(&argv(&["max_tokens=2", "model=other.gguf"]), cmd).unwrap();
        assert_eq!((b.max_tokens, b.model.as_str(), b.seed), (2, "other.gguf", 7));
        // A word that merely ends in a key is not that key.
        let c = Args::parse(&[], "xtv.max_tokens=3").unwrap();
        assert_eq!(c.max_tokens, 8);
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        assert!(Args::parse(&argv(&["prompt=1,x"]), "").unwrap_err().contains("\"x\""));
        assert!(Args::parse(&argv(&["frobnicate=1"]), "").unwrap_err().contains("unknown argument"));
        assert!(Args::parse(&[], "tv.max_tokens=-1").unwrap_err().contains("max_tokens"));
        assert!(Args::parse(&[], "tv.temp=-1").is_err());
        assert!(Args::parse(&[], "tv.prompt=").unwrap_err().contains("empty"));
        assert_eq!(ids(&[1, 22, 333]), "1,22,333");
    }
}
