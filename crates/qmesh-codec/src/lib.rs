//! The kdb+ IPC codec: the value model, the serializer, IPC compression and
//! q-console rendering.
//!
//! This crate does no I/O. It turns bytes into [`K`] values and back; the
//! connection framework (`qmesh-ipc`) moves those bytes over sockets.
//!
//! * [`value`]: the value model ([`K`], [`Atom`], [`Vector`], …).
//! * [`header`]: the 8-byte message header.
//! * [`decode`] / [`encode`]: the serializer, byte-exact with kdb+'s own.
//! * [`compress`](mod@compress): kdb+'s IPC compression, both ways.
//! * [`message`]: whole messages, with their raw bytes kept so a router can
//!   forward a payload without decoding and re-encoding it.
//! * [`display`]: renders values as the q console prints them.
//! * [`temporal`]: kdb+ temporals (2000.01.01 epoch) ⇄ Unix time.
//! * [`limits`]: every limit the decoder enforces, with its reason.

pub mod compress;
pub mod decode;
pub mod display;
pub mod encode;
pub mod error;
pub mod header;
pub mod limits;
pub mod message;
pub mod temporal;
pub mod value;

pub use compress::{compress, decompress};
pub use decode::{decode_body, object_extent};
pub use encode::{EncodeOptions, check_encodable, encode_body_into, encode_message, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use header::{Compression, HEADER_LEN, Header, MsgType};
pub use message::{Message, RawObject};
pub use value::{Atom, Attr, Dict, Enumeration, Function, K, Sym, Symbols, Table, Vector, nulls, types};
