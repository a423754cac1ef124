//! `qmesh q HOST:PORT [EXPR]`: a console client for any kdb+ endpoint.
//!
//! With an expression it sends one sync query and prints the result the way
//! the q console would (errors as `'text`); without one it opens a `q)`
//! prompt with line editing. Two console commands are understood locally,
//! as in q: `\c ROWS COLS` sets the console size used for printing, and `\\`
//! quits. Everything else is sent to the server as a string.
//!
//! The connection is set up as a q client's is:
//!
//! * it offers capability 6 and accepts any result the negotiated
//!   capability can carry (up to 1 TB with capability 6, 2 GiB below it), as
//!   q does; `--max-result-bytes` ([`ConsoleOptions::max_result_bytes`])
//!   bounds the memory a result may take: a larger one is not read, the
//!   connection is closed (logged as `message too large`) and the session
//!   ends with an error;
//! * it answers every request the server sends it while a query runs (a q
//!   server whose `.z.pg` calls back into its caller with `.z.w "…"`): the
//!   console runs no q, so each is answered at once with the q error
//!   [`CALLBACK_REFUSED`], the server's query goes on and its result is
//!   printed. Async messages from the server are dropped.

use std::io::Write;

use qmesh_codec::K;
use qmesh_codec::Message;
use qmesh_codec::display::Console;
use qmesh_codec::limits::MAX_WIRE_LENGTH;
use qmesh_ipc::{Address, ClientOptions, Connection, Handler, IpcError, Peer, Responder, Sender};
use qmesh_process::{ErrorKind, WireError};

/// What can stop a console session (as opposed to a q error, which is
/// printed and the session goes on).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Connect(#[from] IpcError),
    #[error("terminal: {0}")]
    Terminal(String),
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// The prompt, as q shows it.
pub const PROMPT: &str = "q)";

/// Default bound on one result, in bytes (the whole message, after
/// decompression): the most the kdb+ header can carry with capability 6
/// (1 TB), so the console accepts whatever a q client accepts. A server
/// below capability 6 cannot send more than 2 GiB anyway.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = MAX_WIRE_LENGTH;

/// The detail of the q error the console answers a server's request with.
pub const CALLBACK_REFUSED: &str = "qmesh q evaluates no q; a request from the server is refused";

/// How a console connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// Largest result accepted, in bytes (whole message, after
    /// decompression); a larger one closes the connection before it is
    /// read.
    pub max_result_bytes: u64,
}

impl Default for ConsoleOptions {
    fn default() -> ConsoleOptions {
        ConsoleOptions { max_result_bytes: DEFAULT_MAX_RESULT_BYTES }
    }
}

impl ConsoleOptions {
    /// The client options: those of a q client, with the result bound.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            max_message_bytes: self.max_result_bytes.min(MAX_WIRE_LENGTH),
            ..ClientOptions::default()
        }
    }
}

/// What the server sends on its own while the console waits: a request is
/// answered with an error at once (a q client answers every request; one
/// left unanswered leaves both sides waiting for ever), an async message is
/// dropped.
#[derive(Debug)]
struct Callbacks;

impl Handler for Callbacks {
    async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
        // The server may have gone meanwhile; then there is no one to tell.
        let _ = responder.error(WireError::with_detail(ErrorKind::BadRequest, CALLBACK_REFUSED).to_q_text());
    }
}

/// One session against one endpoint.
#[derive(Debug)]
pub struct Session {
    conn: Sender,
    console: Console,
}

/// What a line typed at the prompt asks for.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// Blank: nothing to do.
    Empty,
    /// `\\`: end the session.
    Quit,
    /// `\c ROWS COLS`: resize the console.
    Resize(usize, usize),
    /// Anything else: a query.
    Query(&'a str),
}

fn classify(line: &str) -> Line<'_> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Line::Empty;
    }
    if trimmed == "\\\\" {
        return Line::Quit;
    }
    if let Some(rest) = trimmed.strip_prefix("\\c ") {
        let mut it = rest.split_whitespace().map(str::parse::<usize>);
        if let (Some(Ok(rows)), Some(Ok(cols)), None) = (it.next(), it.next(), it.next()) {
            return Line::Resize(rows, cols);
        }
    }
    Line::Query(trimmed)
}

impl Session {
    /// Connects to `addr` (`host:port`, `:host:port:user:password`,
    /// `:unix://port`) with the default options.
    pub async fn connect(addr: &str) -> Result<Session, ConsoleError> {
        Session::connect_with(addr, ConsoleOptions::default()).await
    }

    /// Connects to `addr` with `options`.
    pub async fn connect_with(addr: &str, options: ConsoleOptions) -> Result<Session, ConsoleError> {
        let addr = Address::parse(addr).map_err(IpcError::from)?;
        let conn = Connection::connect_with_handler(&addr, options.client_options(), Callbacks).await?;
        Ok(Session { conn, console: Console::DEFAULT })
    }

    /// Uses `console` (rows × columns) when printing.
    pub fn set_console(&mut self, console: Console) {
        self.console = console;
    }

    /// Sends `query` and writes the result (or `'error`) to `out`. Returns
    /// whether the query succeeded. Fails only if the connection is lost.
    pub async fn eval(&self, query: &str, out: &mut impl Write) -> Result<bool, ConsoleError> {
        match self.conn.query(query).await {
            Ok(value) => {
                self.print(&value, out)?;
                Ok(true)
            }
            Err(IpcError::Remote(text)) => {
                writeln!(out, "'{text}")?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn print(&self, value: &K, out: &mut impl Write) -> Result<(), ConsoleError> {
        // The generic null prints nothing, not even a blank line, as in q.
        if matches!(value, K::GenericNull) {
            return Ok(());
        }
        let text = self.console.render(value);
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Runs the prompt until `\\`, end of input, or a lost connection.
    pub async fn repl(mut self, out: &mut impl Write) -> Result<(), ConsoleError> {
        let mut editor =
            rustyline::DefaultEditor::new().map_err(|e| ConsoleError::Terminal(e.to_string()))?;
        loop {
            // Line editing blocks; keep it off the runtime's worker threads.
            let (returned, line) = tokio::task::spawn_blocking(move || {
                let line = editor.readline(PROMPT);
                (editor, line)
            })
            .await
            .map_err(|e| ConsoleError::Terminal(e.to_string()))?;
            editor = returned;
            let line = match line {
                Ok(line) => line,
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(rustyline::error::ReadlineError::Eof) => return Ok(()),
                Err(e) => return Err(ConsoleError::Terminal(e.to_string())),
            };
            let _ = editor.add_history_entry(line.as_str());
            match classify(&line) {
                Line::Empty => {}
                Line::Quit => return Ok(()),
                Line::Resize(rows, cols) => self.set_console(Console::new(rows, cols)),
                Line::Query(q) => {
                    self.eval(q, out).await?;
                }
            }
            out.flush()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_commands_are_local() {
        assert_eq!(classify("  "), Line::Empty);
        assert_eq!(classify("\\\\"), Line::Quit);
        assert_eq!(classify("\\c 10 40"), Line::Resize(10, 40));
        assert_eq!(classify("\\c 10"), Line::Query("\\c 10"));
        assert_eq!(classify(" 1+1 "), Line::Query("1+1"));
    }

    /// The bound is what capability 6 can carry unless the user lowers it;
    /// the capability offered is a q client's.
    #[test]
    fn results_are_bounded_only_by_the_capability_by_default() {
        let o = ConsoleOptions::default().client_options();
        assert_eq!(o.max_message_bytes, MAX_WIRE_LENGTH);
        assert!(o.max_message_bytes > qmesh_codec::limits::MAX_MESSAGE_BYTES);
        assert_eq!(o.capability, 6);
        let o = ConsoleOptions { max_result_bytes: u64::MAX }.client_options();
        assert_eq!(o.max_message_bytes, MAX_WIRE_LENGTH);
        let o = ConsoleOptions { max_result_bytes: 1 << 20 }.client_options();
        assert_eq!(o.max_message_bytes, 1 << 20);
    }
}
