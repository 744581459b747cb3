//! Which of the hypervisor's loaded models a tenant may name: its manifest entry's `models`
//! list (model names, as the models were loaded: `model:NAME` boot modules and the NVMe model
//! store's entry names). A tenant opens sessions (`SessionOpen`) and reads model descriptions
//! (`Query` kind `1 + id`) only on the models it lists; any other loaded model is
//! `PermissionDenied`, a model id that is not loaded stays `NoSuchModel`. An empty list means no
//! model access at all. Tenants that do not come from a manifest (`guest:`/`linux:` boot modules
//! without a manifest, used by tests and `cargo xtask run --linux`) may name every loaded model.
//!
//! The type is `Copy` (fixed arrays of the manifest's limits) so it travels inside [`Limits`]
//! (super::Limits).

use super::ModelHost;
use crate::manifest::{MAX_MODELS, MAX_NAME_LEN};
use tensor_hcall::HcallError;

/// The models one tenant may name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ModelAccess {
    /// Every loaded model (tenants that do not come from a manifest).
    any: bool,
    names: [[u8; MAX_NAME_LEN]; MAX_MODELS],
    lens: [u8; MAX_MODELS],
    count: u8,
}

impl ModelAccess {
    /// Every loaded model.
    pub const ANY: ModelAccess = ModelAccess { any: true, names: [[0; MAX_NAME_LEN]; MAX_MODELS], lens: [0; MAX_MODELS], count: 0 };
    /// No model.
    pub const NONE: ModelAccess = ModelAccess { any: false, ..Self::ANY };

    /// Exactly the models named in `names`; `None` when there are more than
    /// [`MAX_MODELS`] or a name is empty or longer than [`MAX_NAME_LEN`] (the manifest's rules).
    pub fn only<S: AsRef<str>>(names: &[S]) -> Option<Self> {
        if names.len() > MAX_MODELS {
            return None;
        }
        let mut a = Self::NONE;
        for (k, n) in names.iter().enumerate() {
            let n = n.as_ref().as_bytes();
            if n.is_empty() || n.len() > MAX_NAME_LEN {
                return None;
            }
            a.names[k][..n.len()].copy_from_slice(n);
            a.lens[k] = n.len() as u8;
        }
        a.count = names.len() as u8;
        Some(a)
    }

    /// Whether the tenant may name every loaded model.
    pub fn is_any(&self) -> bool {
        self.any
    }

    /// The listed names (empty for [`ModelAccess::ANY`] and [`ModelAccess::NONE`]).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names[..usize::from(self.count)]
            .iter()
            .zip(self.lens)
            .map(|(n, len)| core::str::from_utf8(&n[..usize::from(len)]).unwrap_or(""))
    }

    /// Whether the model called `name` may be named.
    pub fn allows_name(&self, name: &[u8]) -> bool {
        self.any || self.names[..usize::from(self.count)].iter().zip(self.lens).any(|(n, len)| &n[..usize::from(len)] == name)
    }

    /// Checks that `model` (an id from the guest) is loaded (`NoSuchModel`) and that the tenant
    /// may name it (`PermissionDenied`). Reads nothing but the host's model table.
    pub fn check(&self, model: u64, models: &dyn ModelHost) -> Result<(), HcallError> {
        let index = usize::try_from(model).map_err(|_| HcallError::NoSuchModel)?;
        let info = models.model_info(index).ok_or(HcallError::NoSuchModel)?;
        // The host's name field is NUL-padded.
        let len = info.name.iter().position(|&b| b == 0).unwrap_or(info.name.len());
        if self.allows_name(&info.name[..len]) {
            Ok(())
        } else {
            Err(HcallError::PermissionDenied)
        }
    }

    /// The listed names no loaded model has (a model that failed to load, a store that was not
    /// there): the tenant could not open them.
    pub fn missing<'s>(&'s self, models: &dyn ModelHost) -> alloc::vec::Vec<&'s str> {
        let loaded = |want: &str| {
            (0..models.model_count()).filter_map(|i| models.model_info(i)).any(|info| {
                let len = info.name.iter().position(|&b| b == 0).unwrap_or(info.name.len());
                &info.name[..len] == want.as_bytes()
            })
        };
        self.names().filter(|n| !loaded(n)).collect()
    }

    /// One log line's worth: `every loaded model`, `no model`, or the names.
    pub fn describe(&self) -> alloc::string::String {
        if self.any {
            return "every loaded model".into();
        }
        if self.count == 0 {
            return "no model".into();
        }
        self.names().collect::<alloc::vec::Vec<_>>().join(", ")
    }
}

impl Default for ModelAccess {
    /// [`ModelAccess::ANY`]: what a tenant without a manifest entry gets.
    fn default() -> Self {
        Self::ANY
    }
}

impl core::fmt::Debug for ModelAccess {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.any {
            return write!(f, "any model");
        }
        f.debug_list().entries(self.names()).finish()
    }
}
