//! SPDY/3.1 for the kubelet streaming server (issue 10).
//!
//! kubectl's exec, attach and port-forward (through moby/spdystream, as
//! k8s.io/apimachinery's `httpstream/spdy` uses it) speak SPDY/3 after an
//! HTTP upgrade: the client opens one stream per channel with a SYN_STREAM
//! whose headers name it (`streamtype`, and for port-forward `port` and
//! `requestid`), the server accepts it with a SYN_REPLY, and both sides send
//! DATA until FIN or RST_STREAM.
//!
//! - [`frame`]: the frame codec ([`Encoder`], [`Decoder`]) with header blocks
//!   in one zlib stream per direction primed with the SPDY/3 dictionary
//!   (inflated under [`Limits`]; sent stored, as zlib's level 0 writes
//!   them: no deflate state per connection).
//! - [`conn`]: a multiplexed [`Connection`] over any tokio
//!   `AsyncRead + AsyncWrite`, whose [`Stream`]s are `AsyncRead +
//!   AsyncWrite`, with SPDY/3.1 flow control.
//!
//! moby/spdystream implements no flow control: it never sends
//! WINDOW_UPDATE. A server talking to kubectl must therefore use
//! [`Config::kubernetes`] ([`FlowControl::Lenient`]), or its writes stall
//! after 64 KiB.
//!
//! # A port-forward server
//!
//! After answering the HTTP upgrade (`Upgrade: SPDY/3.1`, with hyper:
//! `hyper_util::rt::TokioIo::new(upgraded)` is the transport):
//!
//! ```no_run
//! use std::collections::HashMap;
//!
//! use berth_spdy::{Config, Connection, Headers, RstStatus};
//! use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
//!
//! async fn serve(io: impl AsyncRead + AsyncWrite + Send + 'static) {
//!     let conn = Connection::server(io, Config::kubernetes());
//!     let mut error_streams = HashMap::new();
//!     while let Some(stream) = conn.accept().await {
//!         let headers = stream.headers();
//!         let (Some(kind), Some(request)) = (headers.get("streamtype"), headers.get("requestid"))
//!         else {
//!             stream.reset(RstStatus::ProtocolError);
//!             continue;
//!         };
//!         let (kind, request) = (kind.to_owned(), request.to_owned());
//!         // kubectl waits for the SYN_REPLY before it sends anything.
//!         if stream.reply(Headers::new(), false).is_err() {
//!             break;
//!         }
//!         match kind.as_str() {
//!             // Written to only if the port cannot be reached.
//!             "error" => {
//!                 error_streams.insert(request, stream);
//!             }
//!             "data" => {
//!                 let error = error_streams.remove(&request);
//!                 tokio::spawn(async move {
//!                     // A real server copies to and from the pod's port
//!                     // (headers.get("port")); this one echoes.
//!                     let (mut from_kubectl, mut to_kubectl) = stream.split();
//!                     let _ = tokio::io::copy(&mut from_kubectl, &mut to_kubectl).await;
//!                     // Finish with FIN, not a reset.
//!                     let _ = to_kubectl.shutdown().await;
//!                     if let Some(mut error) = error {
//!                         let _ = error.shutdown().await;
//!                     }
//!                 });
//!             }
//!             _ => stream.reset(RstStatus::ProtocolError),
//!         }
//!     }
//! }
//! ```
//!
//! Streams are paired by their `requestid` header. Call `shutdown()` on a
//! stream this side is done writing: dropping both halves of a stream
//! before that sends RST_STREAM(CANCEL).

pub mod conn;
pub mod dictionary;
pub mod frame;
mod headers;
mod zlib;

pub use conn::{Config, Connection, Error, FlowControl, RecvStream, Role, SendStream, Stream};
pub use frame::{
    Decoder, Encoder, Frame, FrameError, FrameHead, GoAwayStatus, Limits, RstStatus, Setting,
};
pub use headers::Headers;
