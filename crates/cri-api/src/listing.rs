//! The responses of ListPodSandbox and ListContainers, with room for items
//! the server encoded itself.
//!
//! kubelet's PLEG lists every pod and container of the node every second.
//! Built as messages, a list of 500 pods is thousands of string and map
//! clones, freed again once encoded: most of the call's time on the
//! server. berthd instead writes each item's wire bytes straight from its
//! records into `encoded`, which is sent after `items`; the wire format is
//! the same (a repeated field may come in any number of pieces), so a
//! client decodes every item into `items` and never sees `encoded`.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{message, skip_field, DecodeContext, WireType};
use prost::DecodeError;

use crate::v1::{Container, PodSandbox};

macro_rules! list_response {
    ($(#[$doc:meta])* $name:ident, $field:ident: $item:ty) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Default, Debug, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            pub $field: Vec<$item>,
            /// Items already in wire form (each with field 1's key and its
            /// length), sent after the others. Shared bytes, so that a
            /// server can keep a list and answer with it without a copy.
            #[serde(skip)]
            pub encoded: Bytes,
        }

        impl prost::Message for $name {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                for item in &self.$field {
                    message::encode(1, item, buf);
                }
                buf.put_slice(&self.encoded);
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                if tag == 1 {
                    message::merge_repeated(wire_type, &mut self.$field, buf, ctx).map_err(
                        |mut e| {
                            e.push(stringify!($name), stringify!($field));
                            e
                        },
                    )
                } else {
                    skip_field(wire_type, tag, buf, ctx)
                }
            }

            fn encoded_len(&self) -> usize {
                message::encoded_len_repeated(1, &self.$field) + self.encoded.len()
            }

            fn clear(&mut self) {
                self.$field.clear();
                self.encoded.clear();
            }
        }
    };
}

list_response!(
    /// ListPodSandboxResponse (`repeated PodSandbox items = 1`).
    ListPodSandboxResponse,
    items: PodSandbox
);

list_response!(
    /// ListContainersResponse (`repeated Container containers = 1`).
    ListContainersResponse,
    containers: Container
);
