//! The reliable-transport stream's wire protocol over kdb+ IPC: what
//! `.rt.pub`, `.rt.sub` and their companions look like on a plain kdb+
//! connection, the messages the node pushes back, the publisher's header,
//! the dedup rule and subscription filters. Sans-IO: bytes and values in,
//! requests and frames out.
//!
//! The interface is rt.qpk's (the kdb Insights "RT" q library), spoken to a
//! `qmesh rt` node over one IPC handle instead of through local log files.
//!
//! # Publishing
//!
//! ```q
//! q)h:hopen`::5010
//! q)h(`.rt.pub;`trades;(`upd;`trade;([]time:3#.z.p;sym:`a`b`c;px:1 2 3f)))
//! 17592186044416                        / its own position, once it is on disk
//! q)neg[h](`.rt.pub;`trades;(`upd;`trade;t))   / async: no answer; errors are logged and counted
//! q)h(`.rt.pub;`trades;msg;`on`ts`id`dedup!(`feedA;0Np;42;`trade))  / with a header
//! q)h(`.rt.pub;`trades;(prd 3#1024)#0x00)
//! 'message too large
//! q)h(`.rt.pub;`nosuch;1)
//! 'unknown stream: nosuch
//! q)h(`.rt.pub;`trades;msg;`id`dedup!(42;`trade))   / 42 again
//! 'duplicate: trade id 42 at or below the watermark 42
//! ```
//!
//! A sync `.rt.pub` answers once the message is durable (written and
//! fsynced; many publishers' messages share one fsync) with the message's
//! own position: a restart point, `.rt.sub` from it delivers that message
//! first. (A pushed `.rt.msg` carries the position *after* its message.) The payload is stored
//! exactly as the publisher serialized it ([`request::Request::Pub`]). Its
//! size limit is [`limits::MAX_PAYLOAD_BYTES`] (RT's 1073741783 bytes).
//!
//! kdb+tick publishers work unchanged: `` neg[h](`.u.upd;`trade;data) ``
//! appends `` (`upd;`trade;data) `` to the node's default stream.
//!
//! # Subscribing
//!
//! ```q
//! q).rt.msg:{[s;msg;pos] ...}            / s: stream, msg: what was published, pos: restart position
//! q).rt.event:{[s;ev;p] ...}             / ev: `badtail`badmsg`reset`skip-forward, p: two positions
//! q)h(`.rt.sub;`trades;::;()!())           / from the oldest message not archived
//! 17592186044416
//! q)h(`.rt.sub;`trades;`latest;()!())      / only new messages
//! q)h(`.rt.sub;`trades;pos;`msg`event`filter!(`onMsg;`onEvent;`trade`quote))
//! q)h(`.rt.pause;`trades); h(`.rt.resume;`trades); h(`.rt.unsub;`trades)
//! q)h(`.rt.get_latest_position;`trades)
//! 17592186044468
//! q)h(`.rt.prune;`trades;pos)              / a lead subscriber: drop rolled segments before pos
//! ```
//!
//! A position must be one handed out: past the latest, or inside a record (a typo), `.rt.sub` and `.rt.prune`
//! answer `'bad request: position … is not the start of a record …` (or `… is ahead of …`).
//!
//! The node pushes `` (`.rt.msg;`stream;msg;pos) `` per message and
//! `` (`.rt.event;`stream;`event;(p1;p2)) `` per event ([`push`],
//! [`event::Event`]), as async messages, in log order.
//!
//! # Modules
//!
//! * [`request`]: the requests, parsed from a message without decoding payloads.
//! * [`header`]: the publisher's header dictionary (`` `on`ts`id`dedup ``).
//! * [`dedup`]: the high watermark of `id` per dedup key, rt.qpk's id rule.
//! * [`filter`]: leading-symbol filters decided from a payload's first bytes.
//! * [`push`]: the frames pushed to subscribers.
//! * [`event`]: `badtail`, `badmsg`, `reset`, `skip-forward`.
//! * [`limits`]: every limit, with its reason.
//! * [`ship`]: log shipping — a publisher's local log to the node, the node's merged log to a subscriber's copy.
//! * [`publisher`]: [`publisher::Publisher`], rt.qpk's `.rt.pub` with a local log shipped in the background.
//! * [`subscriber`]: [`subscriber::Subscriber`], rt.qpk's `.rt.sub` reading a local copy of the merged log.
//! * [`probe`]: whether the node hosts the stream a publisher or subscriber was given (a definite
//!   `'unknown stream` is a configuration error; a node that is down is not).
//! * [`backlog`]: what a publisher's local log holds that the node has not acknowledged.
//! * [`client`]: a subscriber over IPC (what `qmesh rt tail` uses); the one
//!   module here that does I/O.

pub mod backlog;
pub mod client;
pub mod dedup;
pub mod event;
pub mod filter;
pub mod header;
pub mod limits;
pub mod probe;
pub mod publisher;
pub mod push;
pub mod request;
pub mod ship;
pub mod subscriber;

pub use dedup::{Verdict, Watermarks};
pub use event::Event;
pub use filter::Filter;
pub use header::PubHeader;
pub use request::{From, Request, RequestError, SubOptions};
