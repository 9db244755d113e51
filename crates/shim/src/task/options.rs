//! The runtime options of a Create request: berth's own, or containerd's
//! runc options.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::Options;

use crate::error::{Result, ShimError};

pub use berth_shim_client::BERTH_OPTIONS_TYPE;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct BerthOptions {
    pub(super) binary_name: String,
    pub(super) root: String,
    pub(super) systemd_cgroup: bool,
    pub(super) runtime_args: Vec<String>,
    pub(super) no_pivot_root: bool,
    pub(super) no_new_keyring: bool,
    /// The `vm` class's VM (guest, size, hypervisor).
    pub(super) vm: Option<crate::vm::VmOptions>,
}

fn invalid(e: impl std::fmt::Display) -> ShimError {
    ShimError::InvalidArgument(format!("runtime options: {e}"))
}

pub(super) fn parse_options(options: &MessageField<Any>) -> Result<BerthOptions> {
    match options.as_ref() {
        Some(any) if any.type_url.ends_with(BERTH_OPTIONS_TYPE) => {
            serde_json::from_slice(&any.value).map_err(invalid)
        }
        Some(any) if !any.value.is_empty() => {
            let o = Options::parse_from_bytes(&any.value).map_err(invalid)?;
            Ok(BerthOptions {
                binary_name: o.binary_name,
                root: o.root,
                systemd_cgroup: o.systemd_cgroup,
                runtime_args: Vec::new(),
                no_pivot_root: o.no_pivot_root,
                no_new_keyring: o.no_new_keyring,
                vm: None,
            })
        }
        _ => Ok(BerthOptions::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> MessageField<Any> {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        MessageField::some(a)
    }

    #[test]
    fn berth_runc_and_no_options() {
        let o = parse_options(&any(
            BERTH_OPTIONS_TYPE,
            br#"{"binary_name": "runsc", "runtime_args": ["--network=none"]}"#.to_vec(),
        ))
        .unwrap();
        assert_eq!(
            (o.binary_name.as_str(), o.runtime_args.as_slice()),
            ("runsc", &["--network=none".to_owned()][..])
        );
        let mut runc = Options::new();
        runc.binary_name = "crun".into();
        runc.no_pivot_root = true;
        let o = parse_options(&any(
            "containerd.runc.v1.Options",
            runc.write_to_bytes().unwrap(),
        ))
        .unwrap();
        assert_eq!((o.binary_name.as_str(), o.no_pivot_root), ("crun", true));
        assert!(parse_options(&MessageField::none())
            .unwrap()
            .binary_name
            .is_empty());
        let e = parse_options(&any(BERTH_OPTIONS_TYPE, b"{".to_vec())).unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{e}");
        assert!(e.to_string().starts_with("runtime options: "), "{e}");
    }
}
