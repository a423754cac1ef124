//! `qmesh q HOST:PORT [EXPR]`: a console client for any kdb+ endpoint.
//!
//! With an expression it sends one sync query and prints the result the way
//! the q console would (errors as `'text`); without one it opens a `q)`
//! prompt with line editing. Two console commands are understood locally,
//! as in q: `\c ROWS COLS` sets the console size used for printing, and `\\`
//! quits. Everything else is sent to the server as a string.

use std::io::Write;

use qmesh_codec::K;
use qmesh_codec::display::Console;
use qmesh_ipc::{Address, ClientOptions, Connection, IpcError};

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

/// One session against one endpoint.
#[derive(Debug)]
pub struct Session {
    conn: Connection,
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
    /// Connects to `addr` (`host:port`, `:host:port:user:password`, `:unix://port`).
    pub async fn connect(addr: &str) -> Result<Session, ConsoleError> {
        let addr = Address::parse(addr).map_err(IpcError::from)?;
        let conn = Connection::connect(&addr, ClientOptions::default()).await?;
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
}
