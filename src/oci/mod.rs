//! Validated OCI types. Everything that arrives from the wire is parsed into one of
//! these before any handler or storage code sees it, so the rest of berth never has
//! to re-check a name, a tag or a digest.

mod digest;
mod manifest;
mod media_types;
mod name;
mod reference;

pub use digest::{Algorithm, Digest, DigestError};
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind};
pub use media_types::*;
pub use name::{NameError, RepositoryName};
pub use reference::{Reference, ReferenceError, Tag, TagError};
