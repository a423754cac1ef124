//! The kdb+ IPC face: requests in, appends and subscriptions out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use qmesh_codec::{K, Message};
use qmesh_ipc::{ConnId, Handler, Peer, Responder};
use qmesh_log::{Position, Reader, Start};
use qmesh_process::{Action, ErrorKind, WireError};
use qmesh_rt::ship::ShipRequest;
use qmesh_rt::{From, Request, RequestError, SubOptions};
use tracing::{debug, info, warn};

use crate::metrics::NodeMetrics;
use crate::shipping::CopyCtl;
use crate::stream::{Append, Rebase, Reply, ShipBatch, Stream};
use crate::subscription::{self, SubCtl};

/// What every connection shares: the streams, the subscriptions, the metrics.
#[derive(Debug)]
pub struct Node {
    pub(crate) streams: BTreeMap<String, Arc<Stream>>,
    /// Where `.u.upd` appends (the first stream declared).
    pub(crate) default_stream: String,
    pub(crate) subs: Mutex<HashMap<ConnId, BTreeMap<String, Arc<SubCtl>>>>,
    pub(crate) metrics: NodeMetrics,
    /// The origin of messages whose publisher names none and has no user name.
    pub(crate) host: String,
    /// `--permissions`: who may publish or subscribe to which stream.
    pub(crate) permissions: Option<qmesh_process::Permissions>,
    /// The connection shipping each publisher key, by (stream, key), with its session's first position: one at a
    /// time ([`qmesh_rt::ship`]).
    pub(crate) shippers: Mutex<HashMap<(String, String), Shipper>>,
    /// The connections copying a stream (`.rt.ship.pull`), by connection and stream.
    pub(crate) copies: Mutex<HashMap<(ConnId, String), Arc<CopyCtl>>>,
}

/// The connection that shipped a publisher key last, and the session it named.
#[derive(Debug, Clone)]
pub(crate) struct Shipper {
    pub(crate) session: u64,
    pub(crate) peer: Peer,
}

impl Node {
    pub(crate) fn stream(&self, name: &str) -> Result<&Arc<Stream>, WireError> {
        self.streams.get(name).ok_or_else(|| WireError::with_detail(ErrorKind::UnknownStream, name))
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, BTreeMap<String, Arc<SubCtl>>>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn copies(&self) -> std::sync::MutexGuard<'_, HashMap<(ConnId, String), Arc<CopyCtl>>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every copying connection, for the HTTP API.
    pub(crate) fn copy_list(&self) -> Vec<Arc<CopyCtl>> {
        self.copies().values().cloned().collect()
    }

    /// Every subscription, for the HTTP API.
    pub(crate) fn subscriptions(&self) -> Vec<Arc<SubCtl>> {
        self.subs().values().flat_map(|m| m.values().cloned()).collect()
    }

    fn refuse(&self, e: &WireError) {
        self.metrics.error(e.kind.word());
    }

    fn request_error(e: RequestError) -> WireError {
        match e {
            RequestError::TooLarge(n) => WireError::with_detail(
                ErrorKind::MessageTooLarge,
                format!("{n} bytes; the limit is {}", qmesh_rt::limits::MAX_PAYLOAD_BYTES),
            ),
            other => WireError::with_detail(ErrorKind::BadRequest, other.to_string()),
        }
    }

    /// Handles one request; `responder` is `None` for an async message.
    async fn handle(&self, peer: &Peer, msg: &Message, mut responder: Option<Responder>) {
        if let Some(req) = ShipRequest::parse(msg) {
            let result = match req {
                Err(e) => Err(Self::request_error(e)),
                Ok(req) => self.ship(peer, req, &mut responder).await,
            };
            return self.answer(peer, result, responder);
        }
        let result = match Request::parse(msg) {
            Err(e) => Err(Self::request_error(e)),
            Ok(req) => self.dispatch(peer, req, &mut responder).await,
        };
        self.answer(peer, result, responder);
    }

    fn answer(&self, peer: &Peer, result: Result<Option<K>, WireError>, responder: Option<Responder>) {
        match (result, responder) {
            (Ok(Some(k)), Some(r)) => {
                let _ = r.reply(k);
            }
            (Ok(_), _) => {}
            (Err(e), r) => {
                self.refuse(&e);
                match r {
                    Some(r) => {
                        let _ = r.error(e.to_q_text());
                    }
                    None => warn!(conn = %peer.id(), error = %e, "async request refused"),
                }
            }
        }
    }

    /// Runs a request: `Ok(Some(k))` is the answer, `Ok(None)` means the
    /// responder was taken to answer later (an append).
    async fn dispatch(
        &self,
        peer: &Peer,
        req: Request,
        responder: &mut Option<Responder>,
    ) -> Result<Option<K>, WireError> {
        let reply = |responder: &mut Option<Responder>| match responder.take() {
            Some(r) => Reply::Sync(r),
            None => Reply::Async(peer.id()),
        };
        if let Some(p) = &self.permissions {
            let wanted = match &req {
                Request::Pub { stream, .. } => Some((Action::Publish, stream.as_str())),
                Request::Upd { .. } => Some((Action::Publish, self.default_stream.as_str())),
                Request::Sub { stream, .. } => Some((Action::Subscribe, stream.as_str())),
                // reading the stream's tip, and a lead subscriber's truncation, are a subscriber's
                Request::LatestPosition(stream) | Request::Prune { stream, .. } => {
                    Some((Action::Subscribe, stream.as_str()))
                }
                // a connection's own subscriptions
                Request::Pause(_) | Request::Resume(_) | Request::Unsub(_) => None,
            };
            if let Some((action, stream)) = wanted {
                p.check(peer.user(), action, [stream])?;
            }
        }
        match req {
            Request::Pub { stream, payload, header } => {
                let s = self.stream(&stream)?.clone();
                let on = header.on.unwrap_or_else(|| self.origin(peer));
                let a = Append {
                    payload,
                    on,
                    ts: header.ts,
                    id: header.id,
                    dedup: header.dedup,
                    reply: reply(responder),
                };
                s.append(a).await;
                Ok(None)
            }
            Request::Upd { payload, .. } => {
                let s = self.stream(&self.default_stream)?.clone();
                let a = Append {
                    payload,
                    on: self.origin(peer),
                    ts: None,
                    id: None,
                    dedup: None,
                    reply: reply(responder),
                };
                s.append(a).await;
                Ok(None)
            }
            Request::Sub { stream, from, opts } => {
                let s = self.stream(&stream)?.clone();
                let start = match from {
                    From::Start => Start::Oldest,
                    From::Latest => Start::Latest,
                    From::Position(p) => Start::At(Position::from_u64(p as u64)),
                };
                // checking a position that does not decode walks its segment: off the runtime's threads
                let reader = {
                    let s = s.clone();
                    blocking(move || s.reader(start)).await?
                };
                let start = reader.position().as_u64();
                // answer first: the pushes follow the answer on the connection
                if let Some(r) = responder.take() {
                    let _ = r.reply(K::long(start as i64));
                }
                self.subscribe(peer, s, reader, start, opts);
                Ok(None)
            }
            Request::Pause(s) => {
                self.control(peer.id(), s.as_deref(), SubCtl::pause, false)?;
                Ok(Some(K::GenericNull))
            }
            Request::Resume(s) => {
                self.control(peer.id(), s.as_deref(), SubCtl::resume, false)?;
                Ok(Some(K::GenericNull))
            }
            Request::Unsub(s) => {
                self.control(peer.id(), s.as_deref(), SubCtl::stop, true)?;
                Ok(Some(K::GenericNull))
            }
            Request::LatestPosition(stream) => Ok(Some(K::long(self.stream(&stream)?.latest() as i64))),
            Request::Prune { stream, pos } => {
                let s = self.stream(&stream)?.clone();
                // as for .rt.sub: a position this log never handed out is refused, not read as "everything"
                if pos < 0 || pos as u64 > s.latest() {
                    return Err(WireError::with_detail(
                        ErrorKind::BadRequest,
                        format!("prune position {pos} is not in the stream (latest position {})", s.latest()),
                    ));
                }
                // a position inside a record is a typo, not a prune point (it would prune as its record does)
                let c = s.clone();
                blocking(move || c.check_position(pos as u64)).await?;
                Ok(Some(K::long(s.prune(pos as u64).await? as i64)))
            }
        }
    }

    /// Log shipping ([`qmesh_rt::ship`]): a publisher's handshake and batches, a subscriber's copy request.
    async fn ship(
        &self,
        peer: &Peer,
        req: ShipRequest,
        responder: &mut Option<Responder>,
    ) -> Result<Option<K>, WireError> {
        if let Some(p) = &self.permissions {
            // a publisher's shipped log is publishing; a subscriber's copy is subscribing
            let (action, stream) = match &req {
                ShipRequest::Hello { stream, .. }
                | ShipRequest::Recs { stream, .. }
                | ShipRequest::Rebase { stream, .. } => (Action::Publish, stream),
                ShipRequest::Pull { stream, .. } => (Action::Subscribe, stream),
            };
            p.check(peer.user(), action, [stream.as_str()])?;
        }
        match req {
            ShipRequest::Hello { stream, key, session } => {
                let s = self.stream(&stream)?;
                if let Some(session) = session {
                    self.claim_key(peer, &stream, &key, session)?;
                }
                let mark = s.ship_mark(&key);
                debug!(conn = %peer.id(), stream, key, ?mark, "publisher ships its log");
                Ok(Some(K::long(mark.map_or(qmesh_codec::nulls::LONG_NULL, |m| m as i64))))
            }
            ShipRequest::Recs { stream, key, batch } => {
                let s = self.stream(&stream)?.clone();
                s.ship(ShipBatch { key, batch, peer: peer.clone() }).await;
                Ok(None)
            }
            ShipRequest::Pull { stream, from } => {
                let s = self.stream(&stream)?.clone();
                let pos = match from {
                    From::Start => s.first(),
                    From::Latest => s.latest(),
                    From::Position(p) if p as u64 > s.latest() => {
                        return Err(WireError::with_detail(
                            ErrorKind::BadRequest,
                            format!("position {p} is ahead of the stream's latest position {}", s.latest()),
                        ));
                    }
                    From::Position(p) => {
                        // the copy starts at the segment's start, but a position inside a record is the same
                        // client error as for .rt.sub (a Subscriber asks from the position it will read from)
                        let c = s.clone();
                        blocking(move || c.check_position(p as u64)).await?;
                        p as u64
                    }
                };
                // whole segments: the copy's records land at the node's positions
                let start = Position::from_u64(pos).segment().start();
                let reader = s.reader(Start::At(start))?;
                if let Some(r) = responder.take() {
                    let _ = r.reply(K::long(start.as_u64() as i64));
                }
                debug!(conn = %peer.id(), stream = s.name(), %start, "subscriber copies the log");
                let resume = Position::from_u64(pos);
                let ctl = CopyCtl::new(peer, s.name(), start.as_u64());
                let labels = NodeMetrics::stream(s.name());
                let replaced = self.copies().insert((peer.id(), s.name().to_string()), ctl.clone());
                if replaced.is_none() {
                    self.metrics.copies.get_or_create(&labels).inc();
                }
                tokio::spawn(crate::shipping::ship_out(s, peer.clone(), reader, resume, ctl));
                Ok(None)
            }
            ShipRequest::Rebase { stream, key, mark, session } => {
                let s = self.stream(&stream)?.clone();
                debug!(conn = %peer.id(), stream, key, mark, session, "publisher asks to rebase its mark");
                s.rebase(Rebase { key, mark, session }).await?;
                Ok(Some(K::long(qmesh_codec::nulls::LONG_NULL)))
            }
        }
    }

    /// Makes `peer` the one connection shipping `key` on `stream` (see [`qmesh_rt::ship`]): refused while another
    /// open connection ships it from the same or a newer session; a newer session takes over and closes the old
    /// connection.
    fn claim_key(&self, peer: &Peer, stream: &str, key: &str, session: u64) -> Result<(), WireError> {
        let mut shippers = self.shippers.lock().unwrap_or_else(|p| p.into_inner());
        let slot = (stream.to_string(), key.to_string());
        if let Some(old) = shippers.get(&slot)
            && old.peer.id() != peer.id()
            && !old.peer.is_closed()
        {
            if old.session >= session {
                warn!(conn = %peer.id(), remote = %peer.info().remote, stream, key, session,
                    other = %old.peer.id(), other_remote = %old.peer.info().remote, other_session = old.session,
                    "refused a second publisher shipping the same key");
                return Err(WireError::with_detail(
                    ErrorKind::BadRequest,
                    format!(
                        "publisher {key} is already shipping from {} (session {} >= {session}): publisher ids \
                         must be unique per host and stream (another publisher with this id and another path?)",
                        old.peer.info().remote,
                        old.session
                    ),
                ));
            }
            info!(conn = %peer.id(), stream, key, session, old = %old.peer.id(), old_session = old.session,
                "a newer session of a publisher takes over its key; the older connection is closed");
            old.peer.abort();
        }
        shippers.insert(slot, Shipper { session, peer: peer.clone() });
        Ok(())
    }

    /// The default origin: the connection's user name, else this host.
    fn origin(&self, peer: &Peer) -> String {
        if peer.user().is_empty() { self.host.clone() } else { peer.user().to_string() }
    }

    fn subscribe(&self, peer: &Peer, stream: Arc<Stream>, reader: Reader, start: u64, opts: SubOptions) {
        let ctl = SubCtl::new(peer.id(), peer.user(), stream.name(), &opts, start);
        let old = self.subs().entry(peer.id()).or_default().insert(stream.name().to_string(), ctl.clone());
        if let Some(old) = old {
            old.stop();
        } else {
            self.metrics.subscribers.get_or_create(&NodeMetrics::stream(stream.name())).inc();
        }
        debug!(conn = %peer.id(), stream = stream.name(), start, "subscribed");
        tokio::spawn(subscription::deliver(stream, peer.clone(), reader, opts, ctl, self.metrics.clone()));
    }

    /// Applies `f` to the connection's subscription to `stream` (every one
    /// when `None`); `remove` forgets them.
    fn control(
        &self,
        conn: ConnId,
        stream: Option<&str>,
        f: fn(&SubCtl),
        remove: bool,
    ) -> Result<(), WireError> {
        let mut subs = self.subs();
        let Some(mine) = subs.get_mut(&conn) else {
            return match stream {
                None => Ok(()),
                Some(s) => Err(self.not_subscribed(s)),
            };
        };
        let names: Vec<String> = match stream {
            Some(s) if mine.contains_key(s) => vec![s.to_string()],
            Some(s) => return Err(self.not_subscribed(s)),
            None => mine.keys().cloned().collect(),
        };
        for n in names {
            let ctl = if remove { mine.remove(&n) } else { mine.get(&n).cloned() };
            if let Some(ctl) = ctl {
                f(&ctl);
                if remove {
                    self.metrics.subscribers.get_or_create(&NodeMetrics::stream(&n)).dec();
                }
            }
        }
        if mine.is_empty() {
            subs.remove(&conn);
        }
        Ok(())
    }

    fn not_subscribed(&self, stream: &str) -> WireError {
        if self.streams.contains_key(stream) {
            WireError::with_detail(ErrorKind::BadRequest, format!("not subscribed to {stream}"))
        } else {
            WireError::with_detail(ErrorKind::UnknownStream, stream)
        }
    }
}

/// Runs `f` on a blocking thread: checking a client's position may read its whole segment
/// ([`qmesh_log::LogHandle::check_position`] walks the record lengths when no record decodes there).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WireError::with_detail(ErrorKind::Internal, e.to_string()))?
}

/// The IPC handler: a [`Node`] shared by every connection.
#[derive(Debug, Clone)]
pub struct NodeHandler(pub(crate) Arc<Node>);

impl Handler for NodeHandler {
    async fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) {
        let Some(responder) = qmesh_ipc::pykx::try_answer(&msg, responder) else { return };
        self.0.handle(peer, &msg, Some(responder)).await;
    }

    async fn on_async(&self, peer: &Peer, msg: Message) {
        self.0.handle(peer, &msg, None).await;
    }

    async fn on_close(&self, peer: &Peer) {
        let _ = self.0.control(peer.id(), None, SubCtl::stop, true);
        self.0.shippers.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, s| s.peer.id() != peer.id());
        let gone: Vec<String> = {
            let mut copies = self.0.copies();
            let keys: Vec<(ConnId, String)> =
                copies.keys().filter(|(c, _)| *c == peer.id()).cloned().collect();
            keys.into_iter().filter_map(|k| copies.remove(&k).map(|_| k.1)).collect()
        };
        for stream in gone {
            self.0.metrics.copies.get_or_create(&NodeMetrics::stream(&stream)).dec();
        }
    }
}
