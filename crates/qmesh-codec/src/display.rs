//! Renders kdb+ values as the q console prints them.
//!
//! Two forms, as in q:
//!
//! * the **one-line form** of `-3!x` / `.Q.s1` ([`Repr`]): `1 2 3`, `1 2 3i`,
//!   `` `a`b ``, `"ab"`, `,1`, `` `long$() ``, `(1;`a;"b")`,
//!   `` `a`b!1 2 ``, `` +`a`b!(1 2;3 4) ``, `` `s#1 2 3 ``, `'type`;
//! * the **console form** of `.Q.s` ([`Console`], and `Display` for [`K`]):
//!   atoms and vectors are their one-line form; general lists print one
//!   item per line (or as an aligned matrix when every item is a list of the
//!   same length); dictionaries print `key| value` lines with the keys
//!   padded; tables print a header, a `-` rule as wide as the header, and
//!   left-aligned padded columns in which nulls are blank and symbols have
//!   no backtick; keyed tables put `|` between key and value columns.
//!
//! The layout follows q's own definition of `.Q.s` (`.Q.S`/`.Q.s2` in
//! `q.k`): with the console size `\c rows cols`, a line longer than
//! `cols-1` characters is cut to `cols-3` characters and `..`; a list,
//! dictionary or table with more items than fit in `rows-2` lines (`rows-4`
//! rows for tables, whose header takes two) shows the first items and a
//! `..` line. q's console default is `\c 25 80` (before 4.1), and that is
//! what `Display` uses; the alternate flag (`{:#}`) renders without limits.
//!
//! Rendering is bounded by the console size, not by the value: a vector of
//! ten million longs costs the 80 characters that are shown.
//!
//! Floats print with q's default precision `\P 7` (C's `%.7g`: `1.5`,
//! `3.141593`, `1e+10`, `1e-05`); a float whose text has no `.` or exponent
//! gets q's `f` suffix (`1f`, `1 2 3f`, but `1.5 2 3`).
//!
//! Differences from q, all deliberate: widths are counted in characters
//! (q counts bytes), and bytes that are not UTF-8 in symbols show as U+FFFD;
//! an enumeration, whose domain is not carried over IPC, shows its indices
//! in q's index form `` `sym!0 1 ``; a function other than a lambda shows as
//! `<function type N>` since its text is not on the wire; an empty general
//! list at top level shows as `()` (as the q console does) and an empty
//! dictionary in its one-line form.

use std::borrow::Cow;
use std::fmt::{self, Write};

use crate::temporal;
use crate::value::{Atom, Attr, Dict, Enumeration, Function, K, Table, Vector, nulls, types};

/// q's default console height (`\c`), in lines, before V4.1.
pub const DEFAULT_ROWS: usize = 25;
/// q's default console width (`\c`), in characters, before V4.1.
pub const DEFAULT_COLS: usize = 80;
/// The smallest console size q accepts; `\c` coerces smaller values up to it.
pub const MIN_CONSOLE_SIZE: usize = 10;
/// The largest console size q's `\c` accepts.
pub const MAX_CONSOLE_SIZE: usize = 2000;
/// Significant digits of a float, q's default `\P 7`.
pub const FLOAT_PRECISION: usize = 7;

/// A console size, as q's `\c rows cols`, for rendering values as the q
/// console prints them.
///
/// The fields are used as given, except that (like `\c`) a size below
/// [`MIN_CONSOLE_SIZE`] counts as that minimum; [`Console::new`] also caps
/// them at [`MAX_CONSOLE_SIZE`] as `\c` does. [`Console::UNLIMITED`] never
/// truncates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Console {
    /// Console height in lines; output is limited to `rows - 2` lines.
    pub rows: usize,
    /// Console width in characters; lines are limited to `cols - 1`.
    pub cols: usize,
}

impl Default for Console {
    fn default() -> Console {
        Console::DEFAULT
    }
}

impl Console {
    /// `\c 25 80`, q's default.
    pub const DEFAULT: Console = Console { rows: DEFAULT_ROWS, cols: DEFAULT_COLS };
    /// No truncation at all (memory grows with the value).
    pub const UNLIMITED: Console = Console { rows: usize::MAX, cols: usize::MAX };

    /// A console size coerced into `[10, 2000]` like `\c rows cols`.
    pub fn new(rows: usize, cols: usize) -> Console {
        Console {
            rows: rows.clamp(MIN_CONSOLE_SIZE, MAX_CONSOLE_SIZE),
            cols: cols.clamp(MIN_CONSOLE_SIZE, MAX_CONSOLE_SIZE),
        }
    }

    /// `k` as the console prints it, lines separated by `\n`, without the
    /// final newline (`.Q.s` adds one). The generic null `::` renders as
    /// nothing, as at the q prompt.
    pub fn render(&self, k: &K) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_to(&mut out, k);
        out
    }

    /// Writes `k` as the console prints it into `out`.
    pub fn write_to<W: Write + ?Sized>(&self, out: &mut W, k: &K) -> fmt::Result {
        let k = resolve(k);
        let line_max = self.line_max();
        match &*k {
            K::GenericNull => Ok(()),
            K::Function(f) => {
                let mut cut = LineCut::new(out, line_max, false);
                let r = write_function(&mut cut, f);
                cut.settle(r)
            }
            K::List(_, items) if items.is_empty() => write_cut_line(out, line_max, |w| w.write_str("()")),
            K::Dict(d) if d.keys.count() == 0 && !is_keyed_table(d) => {
                write_cut_line(out, line_max, |w| write_s1(w, &k))
            }
            K::List(..) | K::Dict(_) | K::Table(_) => {
                let lines = self.block_lines(&k);
                let mut cut = LineCut::new(out, line_max, false);
                let r = (|| {
                    for (i, line) in lines.iter().enumerate() {
                        if i > 0 {
                            cut.write_char('\n')?;
                        }
                        cut.write_str(line)?;
                    }
                    Ok(())
                })();
                cut.settle(r)
            }
            _ => write_cut_line(out, line_max, |w| write_s1(w, &k)),
        }
    }

    /// The longest line printed whole (`cols - 1`).
    fn line_max(&self) -> usize {
        self.cols.max(MIN_CONSOLE_SIZE) - 1
    }

    /// Characters worth keeping for one line: anything beyond is cut.
    fn cap(&self) -> usize {
        self.cols.max(MIN_CONSOLE_SIZE)
    }

    /// The lines of a list, dictionary or table, rows limited as `.Q.S`
    /// does: `rows - 2` lines, two fewer items for a table's header.
    fn block_lines(&self, k: &K) -> Vec<String> {
        let table_like = match k {
            K::Table(_) => true,
            K::Dict(d) => is_keyed_table(d),
            _ => false,
        };
        let fit = (self.rows.max(MIN_CONSOLE_SIZE) - 2).saturating_sub(if table_like { 2 } else { 0 });
        let count = k.count();
        let truncated = count > fit;
        let limit = if truncated { fit.saturating_sub(1) } else { count };
        let mut lines = self.s2(k, limit);
        if truncated {
            lines.push("..".to_owned());
        }
        lines
    }

    /// `.Q.s2`: the lines (or, for a vector, the cells) of the first
    /// `limit` items of `k`.
    fn s2(&self, k: &K, limit: usize) -> Vec<String> {
        let k = resolve(k);
        match &*k {
            K::Dict(d) => self.s2_dict(d, limit),
            K::Table(t) => self.s2_table(t, limit),
            K::List(_, items) => self.s2_list(&items[..limit.min(items.len())]),
            K::Vector(_, v) => (0..v.len().min(limit)).map(|i| self.cell(val_at(v, i))).collect(),
            K::Enumeration(e) => e.indices.iter().take(limit).map(|&i| self.cell(Val::Long(i))).collect(),
            K::Atom(a) => vec![self.cell(val_of_atom(a))],
            other => vec![self.s1_capped(other)],
        }
    }

    /// The lines of a general list: each item's one-line form, or an
    /// aligned matrix when every item is a list of one length (and not all
    /// booleans, bytes or strings).
    fn s2_list(&self, items: &[K]) -> Vec<String> {
        if items.is_empty() {
            return Vec::new();
        }
        let items: Vec<Cow<'_, K>> = items.iter().map(resolve).collect();
        let one_line_each = items.iter().any(|it| is_scalar_like(it)) || {
            let first = &items[0];
            let same_count = items.iter().all(|it| it.count() == first.count());
            let ty = first.ty();
            let same_simple_type = matches!(ty, 1 | 4 | 10) && items.iter().all(|it| it.ty() == ty);
            !same_count || same_simple_type
        };
        if one_line_each {
            return items.iter().map(|it| self.s1_capped(it)).collect();
        }
        let rows: Vec<Vec<String>> = items.iter().map(|it| self.s2(it, self.cap())).collect();
        self.tab(&rows)
    }

    /// `key| value` lines; a side with fewer lines gets a blank and a rule
    /// line first (the header of a keyed table's other side).
    fn s2_dict(&self, d: &Dict, limit: usize) -> Vec<String> {
        // A side that is not a list (`` (,`a)!`t ``, a splayed table's
        // reference) prints in the one-line form, as at the q console.
        if is_atom_like(&resolve(&d.keys)) || is_atom_like(&resolve(&d.values)) {
            return vec![self.capped(|w| write_dict_s1(w, d))];
        }
        let mut keys = self.s2(&d.keys, limit);
        let mut values = self.s2(&d.values, limit);
        let (nk, nv) = (keys.len(), values.len());
        if nv > nk {
            prepend_header_space(&mut keys);
        }
        if nk > nv {
            prepend_header_space(&mut values);
        }
        if keys.len() != values.len() {
            // q's `.Q.s` falls back to the one-line form when the sides
            // cannot be zipped.
            return vec![self.capped(|w| write_dict_s1(w, d))];
        }
        let width = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0);
        keys.iter()
            .zip(&values)
            .map(|(k, v)| {
                self.capped(|w| {
                    w.write_str(k)?;
                    pad(w, width.saturating_sub(k.chars().count()))?;
                    w.write_str("| ")?;
                    w.write_str(v)
                })
            })
            .collect()
    }

    /// A header of column names, a rule of `-` as wide as the header, then
    /// the first `limit` rows.
    fn s2_table(&self, t: &Table, limit: usize) -> Vec<String> {
        let header: Vec<String> = t.names.iter().map(|n| self.capped(|w| write_raw(w, n))).collect();
        let columns: Vec<Vec<String>> = t.columns.iter().map(|c| self.s2(c, limit)).collect();
        let nrows = match columns.first() {
            Some(first) if !first.is_empty() => columns.iter().map(Vec::len).max().unwrap_or(0),
            _ => 0,
        };
        let mut rows: Vec<Vec<&str>> = Vec::with_capacity(nrows + 1);
        rows.push(header.iter().map(String::as_str).collect());
        for r in 0..nrows {
            rows.push(columns.iter().map(|c| c.get(r).map_or("", String::as_str)).collect());
        }
        let mut lines = self.tab(&rows);
        let width = lines.first().map_or(0, |l| l.chars().count());
        lines.insert(1, self.capped(|w| (0..width).try_for_each(|_| w.write_char('-'))));
        lines
    }

    /// Rows of cells → lines: each column padded to its widest cell, cells
    /// separated by one space (the last column padded too, as in q).
    fn tab<S: AsRef<str>>(&self, rows: &[Vec<S>]) -> Vec<String> {
        let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; ncols];
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.as_ref().chars().count());
            }
        }
        rows.iter()
            .map(|row| {
                self.capped(|w| {
                    for (j, &width) in widths.iter().enumerate() {
                        if j > 0 {
                            w.write_char(' ')?;
                        }
                        let cell = row.get(j).map_or("", AsRef::as_ref);
                        w.write_str(cell)?;
                        pad(w, width - cell.chars().count())?;
                    }
                    Ok(())
                })
            })
            .collect()
    }

    /// Runs `f` into a string of at most [`Console::cap`] characters.
    fn capped(&self, f: impl FnOnce(&mut Capped) -> fmt::Result) -> String {
        let mut c = Capped::new(self.cap());
        // The only error is reaching the cap, after which the text is final.
        let _ = f(&mut c);
        c.text
    }

    /// A value as `string x` gives it, for a table or dictionary cell.
    fn cell(&self, v: Val<'_>) -> String {
        self.capped(|w| write_val(w, v, Mode::Cell).map(drop))
    }

    fn s1_capped(&self, k: &K) -> String {
        self.capped(|w| write_s1(w, k))
    }
}

/// The one-line form of a value, `-3!x` (`.Q.s1`) in q: `1 2 3`,
/// `` `a`b!1 2 ``, `(1;`a;"b")`, `` +`a`b!(1 2;3 4) ``. Never truncated.
#[derive(Debug, Clone, Copy)]
pub struct Repr<'a>(pub &'a K);

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_s1(f, self.0)
    }
}

/// Shorthand for [`Repr`].
pub fn repr(k: &K) -> Repr<'_> {
    Repr(k)
}

impl fmt::Display for K {
    /// As the q console prints it with `\c 25 80`; `{:#}` prints it whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let console = if f.alternate() { Console::UNLIMITED } else { Console::DEFAULT };
        console.write_to(f, self)
    }
}

impl fmt::Display for Atom {
    /// As the q console prints it (`1i`, `` `a ``, `2000.01.01`, `0N`);
    /// cut at 79 characters like any console line unless `{:#}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let console = if f.alternate() { Console::UNLIMITED } else { Console::DEFAULT };
        write_cut_line(f, console.line_max(), |w| write_val(w, val_of_atom(self), Mode::Atom).map(drop))
    }
}

// ---------------------------------------------------------------------------
// Writers.

/// Passes text through, cutting every line longer than `max` characters to
/// `max - 2` characters and `..` (q's console truncation). With `abort`,
/// stops the producer (by failing its write) once the single line is cut.
struct LineCut<'a, W: Write + ?Sized> {
    out: &'a mut W,
    max: usize,
    /// Characters seen on the current line.
    col: usize,
    /// The two characters after `max - 2`, kept until the line is known to
    /// fit or not.
    held: [char; 2],
    cut: bool,
    abort: bool,
    aborted: bool,
    failed: bool,
}

impl<'a, W: Write + ?Sized> LineCut<'a, W> {
    fn new(out: &'a mut W, max: usize, abort: bool) -> Self {
        LineCut { out, max, col: 0, held: [' '; 2], cut: false, abort, aborted: false, failed: false }
    }

    fn emit(&mut self, s: &str) -> fmt::Result {
        self.out.write_str(s).inspect_err(|_| self.failed = true)
    }

    fn emit_char(&mut self, c: char) -> fmt::Result {
        self.out.write_char(c).inspect_err(|_| self.failed = true)
    }

    fn keep(&self) -> usize {
        self.max.saturating_sub(2)
    }

    fn put(&mut self, c: char) -> fmt::Result {
        if c == '\n' {
            self.end_line()?;
            return self.emit_char('\n');
        }
        if self.cut {
            return if self.abort { Err(fmt::Error) } else { Ok(()) };
        }
        let keep = self.keep();
        if self.col < keep {
            self.emit_char(c)?;
        } else if self.col < self.max {
            self.held[self.col - keep] = c;
        } else {
            self.emit("..")?;
            self.cut = true;
            if self.abort {
                self.aborted = true;
                return Err(fmt::Error);
            }
        }
        self.col += 1;
        Ok(())
    }

    fn end_line(&mut self) -> fmt::Result {
        if !self.cut {
            let keep = self.keep();
            for i in 0..self.col.saturating_sub(keep).min(2) {
                let c = self.held[i];
                self.emit_char(c)?;
            }
        }
        self.col = 0;
        self.cut = false;
        Ok(())
    }

    /// Finishes the last line; an abort for truncation is not an error.
    fn settle(mut self, produced: fmt::Result) -> fmt::Result {
        if self.failed {
            return Err(fmt::Error);
        }
        if produced.is_err() && !self.aborted {
            return produced;
        }
        self.end_line()
    }
}

impl<W: Write + ?Sized> Write for LineCut<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !self.cut && self.col.saturating_add(s.len()) <= self.keep() && !s.contains('\n') {
            self.col += s.chars().count();
            return self.emit(s);
        }
        s.chars().try_for_each(|c| self.put(c))
    }
}

/// Writes one line produced by `f`, cut at `max` characters; `f` is stopped
/// as soon as the line is known to be too long.
fn write_cut_line<W: Write + ?Sized>(
    out: &mut W,
    max: usize,
    f: impl FnOnce(&mut LineCut<'_, W>) -> fmt::Result,
) -> fmt::Result {
    let mut cut = LineCut::new(out, max, true);
    let r = f(&mut cut);
    cut.settle(r)
}

/// A string that refuses (fails the write) past `cap` characters.
struct Capped {
    text: String,
    chars: usize,
    cap: usize,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped { text: String::new(), chars: 0, cap }
    }
}

impl Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.cap - self.chars;
        if s.len() <= room {
            self.chars += s.chars().count();
            self.text.push_str(s);
            return Ok(());
        }
        for c in s.chars() {
            if self.chars == self.cap {
                return Err(fmt::Error);
            }
            self.text.push(c);
            self.chars += 1;
        }
        Ok(())
    }
}

/// A small stack buffer for number formatting (ASCII only).
struct Stack {
    buf: [u8; 64],
    len: usize,
}

impl Stack {
    fn new() -> Stack {
        Stack { buf: [0; 64], len: 0 }
    }

    fn as_str(&self) -> &str {
        // Only ASCII from number formatting is ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for Stack {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn pad<W: Write + ?Sized>(w: &mut W, n: usize) -> fmt::Result {
    (0..n).try_for_each(|_| w.write_char(' '))
}

/// A blank line and a rule as wide as the first line, put in front (q's
/// `t0`, which lines a dictionary's side up with a table's header).
fn prepend_header_space(lines: &mut Vec<String>) {
    let width = lines.first().map_or(0, |l| l.chars().count());
    lines.splice(0..0, [" ".repeat(width), "-".repeat(width)]);
}

// ---------------------------------------------------------------------------
// Classification.

/// `K::Raw` decoded (a decode failure shows as an error object); anything
/// else borrowed.
fn resolve(k: &K) -> Cow<'_, K> {
    match k {
        K::Raw(raw) => match raw.decode() {
            Ok(K::Raw(_)) => Cow::Owned(K::error("raw object inside a raw object")),
            Ok(decoded) => Cow::Owned(decoded),
            Err(e) => Cow::Owned(K::error(format!("decode: {e}"))),
        },
        other => Cow::Borrowed(other),
    }
}

/// Items that make `.Q.s2` print a list one item per line: atoms (negative
/// types) and types above 97 (tables, dictionaries, functions, `::`).
fn is_scalar_like(k: &K) -> bool {
    matches!(k, K::Atom(_) | K::Error(_) | K::Dict(_) | K::Table(_) | K::GenericNull | K::Function(_))
}

/// Values that are not lists of any kind: atoms, errors, functions, `::`.
fn is_atom_like(k: &K) -> bool {
    matches!(k, K::Atom(_) | K::Error(_) | K::GenericNull | K::Function(_))
}

fn is_keyed_table(d: &Dict) -> bool {
    matches!(&*resolve(&d.keys), K::Table(_)) && matches!(&*resolve(&d.values), K::Table(_))
}

// ---------------------------------------------------------------------------
// The one-line form.

fn write_s1<W: Write + ?Sized>(w: &mut W, k: &K) -> fmt::Result {
    match k {
        K::Atom(a) => write_val(w, val_of_atom(a), Mode::Atom).map(drop),
        K::Vector(attr, v) => {
            write_attr(w, *attr)?;
            write_vector(w, v)
        }
        K::List(attr, items) => {
            write_attr(w, *attr)?;
            match items.as_slice() {
                [] => w.write_str("()"),
                [one] => {
                    w.write_char(',')?;
                    write_s1(w, one)
                }
                many => {
                    w.write_char('(')?;
                    for (i, item) in many.iter().enumerate() {
                        if i > 0 {
                            w.write_char(';')?;
                        }
                        write_s1(w, item)?;
                    }
                    w.write_char(')')
                }
            }
        }
        K::Dict(d) => write_dict_s1(w, d),
        K::Table(t) => write_table_s1(w, t),
        K::Enumeration(e) => write_enum_s1(w, e),
        K::GenericNull => w.write_str("::"),
        K::Function(f) => write_function(w, f),
        K::Error(text) => {
            w.write_char('\'')?;
            write_raw(w, text)
        }
        K::Raw(_) => {
            let decoded = resolve(k);
            if matches!(&*decoded, K::Raw(_)) {
                return w.write_str("'raw");
            }
            write_s1(w, &decoded)
        }
    }
}

fn write_attr<W: Write + ?Sized>(w: &mut W, attr: Attr) -> fmt::Result {
    match attr.letter() {
        Some(c) => {
            w.write_char('`')?;
            w.write_char(c)?;
            w.write_char('#')
        }
        None => Ok(()),
    }
}

/// `keys!values`, with the keys in parentheses where q needs them
/// (`` (,`a)!,1 ``, `` (+(,`k)!,1 2)!+(,`v)!,3 4 ``); a sorted dictionary
/// shows as `` `s#keys!values ``.
fn write_dict_s1<W: Write + ?Sized>(w: &mut W, d: &Dict) -> fmt::Result {
    let keys = resolve(&d.keys);
    if d.sorted {
        w.write_str("`s#")?;
    }
    let parens = match &*keys {
        K::Vector(attr, v) => {
            let attr_shown = *attr != Attr::None && !(d.sorted && *attr == Attr::Sorted);
            v.len() == 1 || (v.is_empty() && !matches!(v, Vector::Char(_))) || attr_shown
        }
        K::List(attr, items) => items.len() == 1 || *attr != Attr::None,
        K::Atom(_) => false,
        _ => true,
    };
    if parens {
        w.write_char('(')?;
    }
    match &*keys {
        K::Vector(Attr::Sorted, v) if d.sorted => write_vector(w, v)?,
        other => write_s1(w, other)?,
    }
    if parens {
        w.write_char(')')?;
    }
    w.write_char('!')?;
    write_s1(w, &d.values)
}

/// `+names!columns`: `` +`a`b!(1 2;3 4) ``, `` +(,`a)!,1 2 ``.
fn write_table_s1<W: Write + ?Sized>(w: &mut W, t: &Table) -> fmt::Result {
    write_attr(w, t.attr)?;
    w.write_char('+')?;
    match t.names.len() {
        0 => w.write_str("(`symbol$())")?,
        1 => {
            w.write_str("(,`")?;
            write_raw(w, t.names.get(0).unwrap_or_default())?;
            w.write_char(')')?;
        }
        _ => {
            for name in t.names.iter() {
                w.write_char('`')?;
                write_raw(w, name)?;
            }
        }
    }
    w.write_char('!')?;
    match t.columns.as_slice() {
        [] => w.write_str("()"),
        [one] => {
            w.write_char(',')?;
            write_s1(w, one)
        }
        many => {
            w.write_char('(')?;
            for (i, c) in many.iter().enumerate() {
                if i > 0 {
                    w.write_char(';')?;
                }
                write_s1(w, c)?;
            }
            w.write_char(')')
        }
    }
}

/// `` `domain!indices ``, q's notation for an enumeration built from
/// indices (the domain's values are not part of the message).
fn write_enum_s1<W: Write + ?Sized>(w: &mut W, e: &Enumeration) -> fmt::Result {
    write_attr(w, e.attr)?;
    w.write_char('`')?;
    write_raw(w, &e.domain)?;
    w.write_char('!')?;
    match e.indices.as_slice() {
        [] => w.write_str("`long$()"),
        [one] => {
            w.write_char(',')?;
            write_val(w, Val::Long(*one), Mode::Atom).map(drop)
        }
        many => {
            for (i, &x) in many.iter().enumerate() {
                if i > 0 {
                    w.write_char(' ')?;
                }
                write_val(w, Val::Long(x), Mode::Elem)?;
            }
            Ok(())
        }
    }
}

/// A lambda's source text; `::` for the generic null in function form; a
/// placeholder for what has no text on the wire.
fn write_function<W: Write + ?Sized>(w: &mut W, f: &Function) -> fmt::Result {
    if let Some(src) = f.lambda_source() {
        return write_raw(w, src);
    }
    if f.raw[..] == [types::UNARY_PRIMITIVE as u8, 0] {
        return w.write_str("::");
    }
    write!(w, "<function type {}>", f.ty())
}

fn type_name(v: &Vector) -> &'static str {
    match v {
        Vector::Boolean(_) => "boolean",
        Vector::Guid(_) => "guid",
        Vector::Byte(_) => "byte",
        Vector::Short(_) => "short",
        Vector::Int(_) => "int",
        Vector::Long(_) => "long",
        Vector::Real(_) => "real",
        Vector::Float(_) => "float",
        Vector::Char(_) => "char",
        Vector::Symbol(_) => "symbol",
        Vector::Timestamp(_) => "timestamp",
        Vector::Month(_) => "month",
        Vector::Date(_) => "date",
        Vector::Datetime(_) => "datetime",
        Vector::Timespan(_) => "timespan",
        Vector::Minute(_) => "minute",
        Vector::Second(_) => "second",
        Vector::Time(_) => "time",
    }
}

/// A vector's one-line form: `` `long$() `` when empty, `,x` for one item,
/// else the items and the type's suffix where q shows one.
fn write_vector<W: Write + ?Sized>(w: &mut W, v: &Vector) -> fmt::Result {
    match v.len() {
        0 => {
            return match v {
                Vector::Char(_) => w.write_str("\"\""),
                _ => write!(w, "`{}$()", type_name(v)),
            };
        }
        1 => {
            w.write_char(',')?;
            return write_val(w, val_at(v, 0), Mode::Atom).map(drop);
        }
        _ => {}
    }
    match v {
        Vector::Boolean(b) => {
            b.iter().try_for_each(|&x| w.write_char(if x { '1' } else { '0' }))?;
            w.write_char('b')
        }
        Vector::Byte(b) => {
            w.write_str("0x")?;
            b.iter().try_for_each(|x| write!(w, "{x:02x}"))
        }
        Vector::Char(c) => write_quoted(w, c),
        Vector::Symbol(s) => s.iter().try_for_each(|name| {
            w.write_char('`')?;
            write_raw(w, name)
        }),
        _ => {
            let (mut all_plain, mut all_special) = (true, true);
            for i in 0..v.len() {
                if i > 0 {
                    w.write_char(' ')?;
                }
                let shape = write_val(w, val_at(v, i), Mode::Elem)?;
                all_plain &= shape == Shape::Plain;
                all_special &= shape == Shape::Special;
            }
            let suffix = match v {
                Vector::Short(_) => Some('h'),
                Vector::Int(_) => Some('i'),
                Vector::Real(_) => Some('e'),
                Vector::Float(_) => all_plain.then_some('f'),
                Vector::Month(_) => Some('m'),
                Vector::Timestamp(_)
                | Vector::Date(_)
                | Vector::Datetime(_)
                | Vector::Timespan(_)
                | Vector::Minute(_)
                | Vector::Second(_)
                | Vector::Time(_) => all_special.then(|| temporal_char(v.ty())),
                _ => None,
            };
            match suffix {
                Some(c) => w.write_char(c),
                None => Ok(()),
            }
        }
    }
}

/// The type letter of a temporal type (`p m d z n u v t`).
fn temporal_char(ty: i8) -> char {
    match ty {
        types::TIMESTAMP => 'p',
        types::MONTH => 'm',
        types::DATE => 'd',
        types::DATETIME => 'z',
        types::TIMESPAN => 'n',
        types::MINUTE => 'u',
        types::SECOND => 'v',
        _ => 't',
    }
}

/// A string in double quotes with q's escapes: `\"`, `\\`, `\n`, `\r`,
/// `\t`, and `\ooo` (octal) for every other byte outside printable ASCII.
fn write_quoted<W: Write + ?Sized>(w: &mut W, bytes: &[u8]) -> fmt::Result {
    w.write_char('"')?;
    for &b in bytes {
        match b {
            b'"' => w.write_str("\\\"")?,
            b'\\' => w.write_str("\\\\")?,
            b'\n' => w.write_str("\\n")?,
            b'\r' => w.write_str("\\r")?,
            b'\t' => w.write_str("\\t")?,
            0x20..=0x7e => w.write_char(char::from(b))?,
            _ => write!(w, "\\{b:03o}")?,
        }
    }
    w.write_char('"')
}

/// Raw bytes (a symbol's name, an error's text) as text; bytes that are not
/// UTF-8 show as U+FFFD.
fn write_raw<W: Write + ?Sized>(w: &mut W, bytes: &[u8]) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        w.write_str(chunk.valid())?;
        if !chunk.invalid().is_empty() {
            w.write_char(char::REPLACEMENT_CHARACTER)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Atoms and vector items.

/// One value of a basic type, borrowed from an atom or a vector.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Boolean(bool),
    Guid(&'a [u8; 16]),
    Byte(u8),
    Short(i16),
    Int(i32),
    Long(i64),
    Real(f32),
    Float(f64),
    Char(u8),
    Symbol(&'a [u8]),
    Timestamp(i64),
    Month(i32),
    Date(i32),
    Datetime(f64),
    Timespan(i64),
    Minute(i32),
    Second(i32),
    Time(i32),
}

fn val_of_atom(a: &Atom) -> Val<'_> {
    match a {
        Atom::Boolean(x) => Val::Boolean(*x),
        Atom::Guid(x) => Val::Guid(x),
        Atom::Byte(x) => Val::Byte(*x),
        Atom::Short(x) => Val::Short(*x),
        Atom::Int(x) => Val::Int(*x),
        Atom::Long(x) => Val::Long(*x),
        Atom::Real(x) => Val::Real(*x),
        Atom::Float(x) => Val::Float(*x),
        Atom::Char(x) => Val::Char(*x),
        Atom::Symbol(x) => Val::Symbol(x),
        Atom::Timestamp(x) => Val::Timestamp(*x),
        Atom::Month(x) => Val::Month(*x),
        Atom::Date(x) => Val::Date(*x),
        Atom::Datetime(x) => Val::Datetime(*x),
        Atom::Timespan(x) => Val::Timespan(*x),
        Atom::Minute(x) => Val::Minute(*x),
        Atom::Second(x) => Val::Second(*x),
        Atom::Time(x) => Val::Time(*x),
    }
}

/// Item `i` of `v`; `i` must be in range.
fn val_at(v: &Vector, i: usize) -> Val<'_> {
    match v {
        Vector::Boolean(x) => Val::Boolean(x[i]),
        Vector::Guid(x) => Val::Guid(&x[i]),
        Vector::Byte(x) => Val::Byte(x[i]),
        Vector::Short(x) => Val::Short(x[i]),
        Vector::Int(x) => Val::Int(x[i]),
        Vector::Long(x) => Val::Long(x[i]),
        Vector::Real(x) => Val::Real(x[i]),
        Vector::Float(x) => Val::Float(x[i]),
        Vector::Char(x) => Val::Char(x[i]),
        Vector::Symbol(x) => Val::Symbol(x.get(i).unwrap_or_default()),
        Vector::Timestamp(x) => Val::Timestamp(x[i]),
        Vector::Month(x) => Val::Month(x[i]),
        Vector::Date(x) => Val::Date(x[i]),
        Vector::Datetime(x) => Val::Datetime(x[i]),
        Vector::Timespan(x) => Val::Timespan(x[i]),
        Vector::Minute(x) => Val::Minute(x[i]),
        Vector::Second(x) => Val::Second(x[i]),
        Vector::Time(x) => Val::Time(x[i]),
    }
}

/// How a value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// An atom, with its type's marks: `1i`, `0x01`, `` `a ``, `"a"`,
    /// `0Nd`, `1f`.
    Atom,
    /// An item of a vector's one-line form (the vector adds the suffix).
    Elem,
    /// A cell of a table or dictionary, as `string x` gives it: no marks,
    /// nulls blank.
    Cell,
}

/// What a written value looked like, for the vector's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Digits (and a sign) only: a float like this needs its `f`.
    Plain,
    /// Anything else that is not null or infinite.
    Other,
    /// A null or an infinity.
    Special,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    Null,
    Inf,
    NegInf,
}

fn special_i64(v: i64) -> Option<Special> {
    match v {
        nulls::LONG_NULL => Some(Special::Null),
        nulls::LONG_INF => Some(Special::Inf),
        v if v == -nulls::LONG_INF => Some(Special::NegInf),
        _ => None,
    }
}

fn special_i32(v: i32) -> Option<Special> {
    match v {
        nulls::INT_NULL => Some(Special::Null),
        nulls::INT_INF => Some(Special::Inf),
        v if v == -nulls::INT_INF => Some(Special::NegInf),
        _ => None,
    }
}

fn special_f64(v: f64) -> Option<Special> {
    if v.is_nan() {
        Some(Special::Null)
    } else if v == f64::INFINITY {
        Some(Special::Inf)
    } else if v == f64::NEG_INFINITY {
        Some(Special::NegInf)
    } else {
        None
    }
}

/// Writes a null or infinity: `0N`/`0W`/`-0W` (`upper`) or `0n`/`0w`/`-0w`;
/// the null is blank in a cell. `inf_lower` makes only the infinities lower
/// case (datetime: `0Nz`, `0wz`).
fn write_special<W: Write + ?Sized>(
    w: &mut W,
    s: Special,
    mode: Mode,
    null_lower: bool,
    inf_lower: bool,
) -> fmt::Result {
    match (s, mode) {
        (Special::Null, Mode::Cell) => Ok(()),
        (Special::Null, _) => w.write_str(if null_lower { "0n" } else { "0N" }),
        (Special::Inf, _) => w.write_str(if inf_lower { "0w" } else { "0W" }),
        (Special::NegInf, _) => w.write_str(if inf_lower { "-0w" } else { "-0W" }),
    }
}

fn suffix<W: Write + ?Sized>(w: &mut W, mode: Mode, c: char) -> fmt::Result {
    if mode == Mode::Atom { w.write_char(c) } else { Ok(()) }
}

/// Writes one value; returns its shape.
fn write_val<W: Write + ?Sized>(w: &mut W, v: Val<'_>, mode: Mode) -> Result<Shape, fmt::Error> {
    match v {
        Val::Boolean(b) => {
            w.write_char(if b { '1' } else { '0' })?;
            suffix(w, mode, 'b')?;
        }
        Val::Guid(g) => write_guid(w, g)?,
        Val::Byte(b) => {
            if mode == Mode::Atom {
                w.write_str("0x")?;
            }
            write!(w, "{b:02x}")?;
        }
        Val::Char(c) => match mode {
            Mode::Atom => write_quoted(w, &[c])?,
            _ => w.write_char(if c.is_ascii() { char::from(c) } else { char::REPLACEMENT_CHARACTER })?,
        },
        Val::Symbol(s) => {
            if mode != Mode::Cell {
                w.write_char('`')?;
            }
            write_raw(w, s)?;
        }
        Val::Short(x) => {
            // q has no display for the short infinities: 0Wh is 32767h.
            if x == nulls::SHORT_NULL {
                write_special(w, Special::Null, mode, false, false)?;
                suffix(w, mode, 'h')?;
                return Ok(Shape::Special);
            }
            write!(w, "{x}")?;
            suffix(w, mode, 'h')?;
        }
        Val::Int(x) => {
            let shape = write_int(w, i64::from(x), special_i32(x), mode)?;
            suffix(w, mode, 'i')?;
            return Ok(shape);
        }
        Val::Long(x) => return write_int(w, x, special_i64(x), mode),
        Val::Real(x) => {
            let shape = match special_f64(f64::from(x)) {
                Some(s) => {
                    write_special(w, s, mode, false, mode == Mode::Cell)?;
                    Shape::Special
                }
                None => write_float(w, f64::from(x))?,
            };
            suffix(w, mode, 'e')?;
            return Ok(shape);
        }
        Val::Float(x) => {
            return match special_f64(x) {
                Some(s) => {
                    write_special(w, s, mode, true, true)?;
                    Ok(Shape::Special)
                }
                None => {
                    let shape = write_float(w, x)?;
                    if shape == Shape::Plain {
                        suffix(w, mode, 'f')?;
                    }
                    Ok(shape)
                }
            };
        }
        Val::Month(m) => {
            let shape = match special_i32(m) {
                Some(s) => {
                    write_special(w, s, mode, false, false)?;
                    Shape::Special
                }
                None => {
                    write_month(w, m)?;
                    Shape::Other
                }
            };
            suffix(w, mode, 'm')?;
            return Ok(shape);
        }
        Val::Timestamp(x) => return temporal_i64(w, x, mode, 'p', write_timestamp),
        Val::Timespan(x) => return temporal_i64(w, x, mode, 'n', write_timespan),
        Val::Date(x) => return temporal_i32(w, x, mode, 'd', write_date),
        Val::Minute(x) => return temporal_i32(w, x, mode, 'u', write_minute),
        Val::Second(x) => return temporal_i32(w, x, mode, 'v', write_second),
        Val::Time(x) => return temporal_i32(w, x, mode, 't', write_time),
        Val::Datetime(z) => {
            return match special_f64(z) {
                Some(s) => {
                    write_special(w, s, mode, false, true)?;
                    suffix(w, mode, 'z')?;
                    Ok(Shape::Special)
                }
                None => {
                    write_datetime(w, z)?;
                    Ok(Shape::Other)
                }
            };
        }
    }
    Ok(Shape::Other)
}

fn write_int<W: Write + ?Sized>(
    w: &mut W,
    x: i64,
    special: Option<Special>,
    mode: Mode,
) -> Result<Shape, fmt::Error> {
    match special {
        Some(s) => {
            write_special(w, s, mode, false, false)?;
            Ok(Shape::Special)
        }
        None => {
            write!(w, "{x}")?;
            Ok(Shape::Plain)
        }
    }
}

/// A temporal atom or item: its text, or `0N`/`0W`/`-0W` (with the type
/// letter when an atom: `0Nd`).
fn temporal_i64<W: Write + ?Sized>(
    w: &mut W,
    x: i64,
    mode: Mode,
    letter: char,
    body: fn(&mut W, i64) -> fmt::Result,
) -> Result<Shape, fmt::Error> {
    match special_i64(x) {
        Some(s) => {
            write_special(w, s, mode, false, false)?;
            suffix(w, mode, letter)?;
            Ok(Shape::Special)
        }
        None => {
            body(w, x)?;
            Ok(Shape::Other)
        }
    }
}

fn temporal_i32<W: Write + ?Sized>(
    w: &mut W,
    x: i32,
    mode: Mode,
    letter: char,
    body: fn(&mut W, i32) -> fmt::Result,
) -> Result<Shape, fmt::Error> {
    match special_i32(x) {
        Some(s) => {
            write_special(w, s, mode, false, false)?;
            suffix(w, mode, letter)?;
            Ok(Shape::Special)
        }
        None => {
            body(w, x)?;
            Ok(Shape::Other)
        }
    }
}

/// A finite float as C's `%.7g` (q's `\P 7`): 7 significant digits,
/// trailing zeros dropped, exponent form below 1e-4 and from 1e7.
fn write_float<W: Write + ?Sized>(w: &mut W, x: f64) -> Result<Shape, fmt::Error> {
    let mut sci = Stack::new();
    write!(sci, "{:.*e}", FLOAT_PRECISION - 1, x)?;
    let text = sci.as_str();
    let e = text.find('e').ok_or(fmt::Error)?;
    let exp: i32 = text[e + 1..].parse().map_err(|_| fmt::Error)?;
    if exp < -4 || exp >= FLOAT_PRECISION as i32 {
        w.write_str(trim_fraction(&text[..e]))?;
        write!(w, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())?;
        return Ok(Shape::Other);
    }
    let decimals = (FLOAT_PRECISION as i32 - 1 - exp) as usize;
    let mut fixed = Stack::new();
    write!(fixed, "{x:.decimals$}")?;
    let digits = trim_fraction(fixed.as_str());
    w.write_str(digits)?;
    Ok(if digits.contains('.') { Shape::Other } else { Shape::Plain })
}

/// `1.500000` → `1.5`, `2.000000` → `2`.
fn trim_fraction(s: &str) -> &str {
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { s }
}

fn write_guid<W: Write + ?Sized>(w: &mut W, g: &[u8; 16]) -> fmt::Result {
    for (i, b) in g.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            w.write_char('-')?;
        }
        write!(w, "{b:02x}")?;
    }
    Ok(())
}

/// The years q can display; dates outside show as `0000.00.00`.
const DISPLAY_YEARS: std::ops::RangeInclusive<i64> = 1..=9999;

fn write_civil_date<W: Write + ?Sized>(w: &mut W, c: Option<temporal::CivilDate>) -> fmt::Result {
    match c {
        Some(c) if DISPLAY_YEARS.contains(&c.year) => write!(w, "{:04}.{:02}.{:02}", c.year, c.month, c.day),
        _ => w.write_str("0000.00.00"),
    }
}

fn write_date<W: Write + ?Sized>(w: &mut W, d: i32) -> fmt::Result {
    write_civil_date(w, temporal::date_to_civil(d))
}

fn write_month<W: Write + ?Sized>(w: &mut W, m: i32) -> fmt::Result {
    match temporal::month_to_year_month(m) {
        Some((year, month)) if DISPLAY_YEARS.contains(&year) => write!(w, "{year:04}.{month:02}"),
        _ => w.write_str("0000.00"),
    }
}

fn write_timestamp<W: Write + ?Sized>(w: &mut W, p: i64) -> fmt::Result {
    match temporal::timestamp_to_civil(p) {
        Some(c) => {
            write_civil_date(w, Some(c.date))?;
            write!(w, "D{:02}:{:02}:{:02}.{:09}", c.hour, c.minute, c.second, c.nanos)
        }
        None => w.write_str("0000.00.00D00:00:00.000000000"),
    }
}

fn write_datetime<W: Write + ?Sized>(w: &mut W, z: f64) -> fmt::Result {
    match temporal::datetime_to_civil(z) {
        Some(c) if DISPLAY_YEARS.contains(&c.date.year) => {
            write_civil_date(w, Some(c.date))?;
            write!(w, "T{:02}:{:02}:{:02}.{:03}", c.hour, c.minute, c.second, c.nanos / 1_000_000)
        }
        _ => w.write_str("0000.00.00T00:00:00.000"),
    }
}

fn write_timespan<W: Write + ?Sized>(w: &mut W, n: i64) -> fmt::Result {
    match temporal::timespan_parts(n) {
        Some(p) => write!(
            w,
            "{}{}D{:02}:{:02}:{:02}.{:09}",
            if p.negative { "-" } else { "" },
            p.days,
            p.hours,
            p.minutes,
            p.seconds,
            p.nanos
        ),
        None => w.write_str("0D00:00:00.000000000"),
    }
}

fn sign<W: Write + ?Sized>(w: &mut W, negative: bool) -> fmt::Result {
    if negative { w.write_char('-') } else { Ok(()) }
}

/// `hh:mm`; hours go past 24 (`25:00`), negatives lead with `-`.
fn write_minute<W: Write + ?Sized>(w: &mut W, u: i32) -> fmt::Result {
    sign(w, u < 0)?;
    let a = u.unsigned_abs();
    write!(w, "{:02}:{:02}", a / 60, a % 60)
}

fn write_second<W: Write + ?Sized>(w: &mut W, v: i32) -> fmt::Result {
    sign(w, v < 0)?;
    let a = v.unsigned_abs();
    write!(w, "{:02}:{:02}:{:02}", a / 3_600, a / 60 % 60, a % 60)
}

fn write_time<W: Write + ?Sized>(w: &mut W, t: i32) -> fmt::Result {
    sign(w, t < 0)?;
    let a = t.unsigned_abs();
    let s = a / 1_000;
    write!(w, "{:02}:{:02}:{:02}.{:03}", s / 3_600, s / 60 % 60, s % 60, a % 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Symbols, nulls::*};
    use bytes::Bytes;

    const NN: i64 = LONG_NULL;
    const WW: i64 = LONG_INF;
    const NI: i32 = INT_NULL;
    const WI: i32 = INT_INF;

    fn show(k: &K) -> String {
        k.to_string()
    }

    fn s1(k: &K) -> String {
        Repr(k).to_string()
    }

    fn atom(a: Atom) -> String {
        K::Atom(a).to_string()
    }

    fn vecs(v: Vector) -> String {
        K::from(v).to_string()
    }

    fn longs(v: &[i64]) -> K {
        K::from(Vector::Long(v.to_vec()))
    }

    fn table(names: &[&str], columns: Vec<K>) -> K {
        K::Table(Table { attr: Attr::None, names: names.iter().collect::<Symbols>(), columns })
    }

    fn keyed(key: K, value: K) -> K {
        K::dict(key, value)
    }

    const GUID: [u8; 16] =
        [0x8c, 0x68, 0x0a, 0x01, 0x5a, 0x49, 0x5a, 0xab, 0x5a, 0x65, 0xd4, 0xbf, 0xdd, 0xb6, 0xa6, 0x61];

    #[test]
    fn integral_atoms() {
        assert_eq!(atom(Atom::Long(1)), "1");
        assert_eq!(atom(Atom::Long(-5)), "-5");
        assert_eq!(atom(Atom::Long(NN)), "0N");
        assert_eq!(atom(Atom::Long(WW)), "0W");
        assert_eq!(atom(Atom::Long(-WW)), "-0W");
        assert_eq!(atom(Atom::Int(1)), "1i");
        assert_eq!(atom(Atom::Int(NI)), "0Ni");
        assert_eq!(atom(Atom::Int(WI)), "0Wi");
        assert_eq!(atom(Atom::Int(-WI)), "-0Wi");
        assert_eq!(atom(Atom::Short(1)), "1h");
        assert_eq!(atom(Atom::Short(SHORT_NULL)), "0Nh");
        // "There is no display for short infinity": 0Wh is 32767h.
        assert_eq!(atom(Atom::Short(SHORT_INF)), "32767h");
        assert_eq!(atom(Atom::Short(-SHORT_INF)), "-32767h");
        assert_eq!(atom(Atom::Boolean(true)), "1b");
        assert_eq!(atom(Atom::Boolean(false)), "0b");
        assert_eq!(atom(Atom::Byte(1)), "0x01");
        assert_eq!(atom(Atom::Byte(0xff)), "0xff");
    }

    #[test]
    fn float_atoms() {
        assert_eq!(atom(Atom::Float(1.0)), "1f");
        assert_eq!(atom(Atom::Float(1.5)), "1.5");
        assert_eq!(atom(Atom::Float(0.0)), "0f");
        assert_eq!(atom(Atom::Float(-1.0)), "-1f");
        assert_eq!(atom(Atom::Float(100.0)), "100f");
        assert_eq!(atom(Atom::Float(0.1)), "0.1");
        assert_eq!(atom(Atom::Float(std::f64::consts::PI)), "3.141593");
        assert_eq!(atom(Atom::Float(1234567.0)), "1234567f");
        assert_eq!(atom(Atom::Float(12345678.0)), "1.234568e+07");
        assert_eq!(atom(Atom::Float(1e10)), "1e+10");
        assert_eq!(atom(Atom::Float(0.0001)), "0.0001");
        assert_eq!(atom(Atom::Float(0.00001)), "1e-05");
        assert_eq!(atom(Atom::Float(2.5e-10)), "2.5e-10");
        assert_eq!(atom(Atom::Float(-1e100)), "-1e+100");
        // from the datatypes page: `float$0Wj and `float$0Wi
        assert_eq!(atom(Atom::Float(i64::MAX as f64)), "9.223372e+18");
        assert_eq!(atom(Atom::Float(f64::from(i32::MAX))), "2.147484e+09");
        assert_eq!(atom(Atom::Float(f64::NAN)), "0n");
        assert_eq!(atom(Atom::Float(f64::INFINITY)), "0w");
        assert_eq!(atom(Atom::Float(f64::NEG_INFINITY)), "-0w");
        assert_eq!(atom(Atom::Real(1.5)), "1.5e");
        assert_eq!(atom(Atom::Real(1.0)), "1e");
        assert_eq!(atom(Atom::Real(1.1)), "1.1e");
        assert_eq!(atom(Atom::Real(f32::NAN)), "0Ne");
        assert_eq!(atom(Atom::Real(f32::INFINITY)), "0We");
        assert_eq!(atom(Atom::Real(f32::NEG_INFINITY)), "-0We");
    }

    #[test]
    fn text_atoms() {
        assert_eq!(atom(Atom::Char(b'a')), "\"a\"");
        assert_eq!(atom(Atom::Char(b' ')), "\" \"");
        assert_eq!(atom(Atom::Char(b'"')), r#""\"""#);
        assert_eq!(atom(Atom::Char(b'\n')), r#""\n""#);
        assert_eq!(atom(Atom::Char(0x01)), r#""\001""#);
        assert_eq!(show(&K::sym("a")), "`a");
        assert_eq!(show(&K::sym("")), "`");
        assert_eq!(show(&K::sym("hello world")), "`hello world");
        assert_eq!(show(&K::sym(b"a\xffb")), "`a\u{fffd}b");
        assert_eq!(atom(Atom::Guid(GUID)), "8c680a01-5a49-5aab-5a65-d4bfddb6a661");
        assert_eq!(atom(Atom::Guid(GUID_NULL)), "00000000-0000-0000-0000-000000000000");
    }

    #[test]
    fn temporal_atoms() {
        assert_eq!(atom(Atom::Timestamp(0)), "2000.01.01D00:00:00.000000000");
        assert_eq!(atom(Atom::Timestamp(1)), "2000.01.01D00:00:00.000000001");
        assert_eq!(atom(Atom::Timestamp(-1)), "1999.12.31D23:59:59.999999999");
        assert_eq!(atom(Atom::Timestamp(-WW + 1)), "1707.09.22D00:12:43.145224194");
        assert_eq!(atom(Atom::Timestamp(WW - 1)), "2292.04.10D23:47:16.854775806");
        assert_eq!(atom(Atom::Timestamp(NN)), "0Np");
        assert_eq!(atom(Atom::Timestamp(WW)), "0Wp");
        assert_eq!(atom(Atom::Timestamp(-WW)), "-0Wp");
        assert_eq!(atom(Atom::Month(0)), "2000.01m");
        assert_eq!(atom(Atom::Month(1)), "2000.02m");
        assert_eq!(atom(Atom::Month(-1)), "1999.12m");
        assert_eq!(atom(Atom::Month(322)), "2026.11m");
        assert_eq!(atom(Atom::Month(NI)), "0Nm");
        assert_eq!(atom(Atom::Month(WI)), "0Wm");
        assert_eq!(atom(Atom::Date(0)), "2000.01.01");
        assert_eq!(atom(Atom::Date(-1)), "1999.12.31");
        assert_eq!(atom(Atom::Date(-10_957)), "1970.01.01");
        assert_eq!(atom(Atom::Date(59)), "2000.02.29");
        assert_eq!(atom(Atom::Date(9_823)), "2026.11.23");
        assert_eq!(atom(Atom::Date(NI)), "0Nd");
        assert_eq!(atom(Atom::Date(WI)), "0Wd");
        assert_eq!(atom(Atom::Date(-WI)), "-0Wd");
        // 0001.01.01-1: out of the displayable range
        assert_eq!(atom(Atom::Date(-730_119)), "0001.01.01");
        assert_eq!(atom(Atom::Date(-730_120)), "0000.00.00");
        assert_eq!(atom(Atom::Datetime(0.0)), "2000.01.01T00:00:00.000");
        assert_eq!(atom(Atom::Datetime(0.5)), "2000.01.01T12:00:00.000");
        assert_eq!(atom(Atom::Datetime(-0.25)), "1999.12.31T18:00:00.000");
        assert_eq!(atom(Atom::Datetime(-730_120.0)), "0000.00.00T00:00:00.000");
        assert_eq!(atom(Atom::Datetime(f64::NAN)), "0Nz");
        assert_eq!(atom(Atom::Datetime(f64::INFINITY)), "0wz");
        assert_eq!(atom(Atom::Timespan(0)), "0D00:00:00.000000000");
        assert_eq!(atom(Atom::Timespan(1)), "0D00:00:00.000000001");
        assert_eq!(atom(Atom::Timespan(-1)), "-0D00:00:00.000000001");
        assert_eq!(atom(Atom::Timespan(534_523_452_345)), "0D00:08:54.523452345");
        assert_eq!(atom(Atom::Timespan(7_456_868_725_345_000)), "86D07:21:08.725345000");
        assert_eq!(atom(Atom::Timespan(-WW + 1)), "-106751D23:47:16.854775806");
        assert_eq!(atom(Atom::Timespan(NN)), "0Nn");
        assert_eq!(atom(Atom::Timespan(WW)), "0Wn");
        assert_eq!(atom(Atom::Minute(0)), "00:00");
        assert_eq!(atom(Atom::Minute(1_244)), "20:44");
        assert_eq!(atom(Atom::Minute(5_321)), "88:41");
        assert_eq!(atom(Atom::Minute(-1)), "-00:01");
        assert_eq!(atom(Atom::Minute(NI)), "0Nu");
        assert_eq!(atom(Atom::Minute(WI)), "0Wu");
        assert_eq!(atom(Atom::Second(0)), "00:00:00");
        assert_eq!(atom(Atom::Second(34_523)), "09:35:23");
        assert_eq!(atom(Atom::Second(654_234)), "181:43:54");
        assert_eq!(atom(Atom::Second(NI)), "0Nv");
        assert_eq!(atom(Atom::Time(0)), "00:00:00.000");
        assert_eq!(atom(Atom::Time(53_052_345)), "14:44:12.345");
        assert_eq!(atom(Atom::Time(-1_000)), "-00:00:01.000");
        assert_eq!(atom(Atom::Time(NI)), "0Nt");
        assert_eq!(atom(Atom::Time(-WI)), "-0Wt");
    }

    #[test]
    fn integral_vectors() {
        assert_eq!(show(&longs(&[1, 2, 3])), "1 2 3");
        assert_eq!(show(&longs(&[1, NN, 3])), "1 0N 3");
        assert_eq!(show(&longs(&[NN, NN])), "0N 0N");
        assert_eq!(show(&longs(&[WW, NN, -WW])), "0W 0N -0W");
        assert_eq!(show(&longs(&[])), "`long$()");
        assert_eq!(show(&longs(&[1])), ",1");
        assert_eq!(show(&longs(&[NN])), ",0N");
        assert_eq!(vecs(Vector::Int(vec![1, 2, 3])), "1 2 3i");
        assert_eq!(vecs(Vector::Int(vec![1, NI])), "1 0Ni");
        assert_eq!(vecs(Vector::Int(vec![NI, NI])), "0N 0Ni");
        assert_eq!(vecs(Vector::Int(vec![1, WI, -WI])), "1 0W -0Wi");
        assert_eq!(vecs(Vector::Int(vec![7])), ",7i");
        assert_eq!(vecs(Vector::Int(vec![])), "`int$()");
        assert_eq!(vecs(Vector::Short(vec![1, 2, 3])), "1 2 3h");
        assert_eq!(vecs(Vector::Short(vec![SHORT_NULL, 1])), "0N 1h");
        assert_eq!(vecs(Vector::Short(vec![SHORT_INF, 1])), "32767 1h");
        assert_eq!(vecs(Vector::Short(vec![1])), ",1h");
        assert_eq!(vecs(Vector::Boolean(vec![true, false, true])), "101b");
        assert_eq!(vecs(Vector::Boolean(vec![true])), ",1b");
        assert_eq!(vecs(Vector::Boolean(vec![])), "`boolean$()");
        assert_eq!(vecs(Vector::Byte(vec![1, 2, 3])), "0x010203");
        assert_eq!(vecs(Vector::Byte(vec![1])), ",0x01");
        assert_eq!(vecs(Vector::Byte(vec![])), "`byte$()");
    }

    #[test]
    fn float_vectors() {
        assert_eq!(vecs(Vector::Float(vec![1.0, 2.0, 3.0])), "1 2 3f");
        assert_eq!(vecs(Vector::Float(vec![1.5, 2.0, 3.0])), "1.5 2 3");
        assert_eq!(vecs(Vector::Float(vec![1.0, f64::NAN, 3.0])), "1 0n 3");
        assert_eq!(vecs(Vector::Float(vec![f64::NAN, f64::NAN])), "0n 0n");
        assert_eq!(vecs(Vector::Float(vec![f64::INFINITY, 1.0])), "0w 1");
        assert_eq!(vecs(Vector::Float(vec![1e10, 1.0])), "1e+10 1");
        assert_eq!(vecs(Vector::Float(vec![1.0])), ",1f");
        assert_eq!(vecs(Vector::Float(vec![1.5])), ",1.5");
        assert_eq!(vecs(Vector::Float(vec![])), "`float$()");
        assert_eq!(vecs(Vector::Real(vec![1.5, 2.0])), "1.5 2e");
        assert_eq!(vecs(Vector::Real(vec![1.0, 2.0])), "1 2e");
        assert_eq!(vecs(Vector::Real(vec![f32::NAN, f32::NAN])), "0N 0Ne");
        assert_eq!(vecs(Vector::Real(vec![1.0])), ",1e");
        assert_eq!(vecs(Vector::Real(vec![])), "`real$()");
    }

    #[test]
    fn text_vectors() {
        assert_eq!(show(&K::string("ab")), "\"ab\"");
        assert_eq!(show(&K::string("a")), ",\"a\"");
        assert_eq!(show(&K::string("")), "\"\"");
        assert_eq!(show(&K::string("say \"hi\"\\\n")), r#""say \"hi\"\\\n""#);
        assert_eq!(show(&K::string("tab\there\r")), r#""tab\there\r""#);
        // q escapes bytes outside printable ASCII in octal (the Unicode page).
        assert_eq!(show(&K::string("Zürich")), r#""Z\303\274rich""#);
        assert_eq!(show(&K::syms(["a", "b"])), "`a`b");
        assert_eq!(show(&K::syms(["a"])), ",`a");
        assert_eq!(show(&K::syms(["a", "", "b"])), "`a``b");
        assert_eq!(show(&K::syms(Vec::<&str>::new())), "`symbol$()");
        assert_eq!(
            vecs(Vector::Guid(vec![GUID, GUID_NULL])),
            "8c680a01-5a49-5aab-5a65-d4bfddb6a661 00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(vecs(Vector::Guid(vec![GUID])), ",8c680a01-5a49-5aab-5a65-d4bfddb6a661");
        assert_eq!(vecs(Vector::Guid(vec![])), "`guid$()");
    }

    #[test]
    fn temporal_vectors() {
        assert_eq!(
            vecs(Vector::Timestamp(vec![0, 1])),
            "2000.01.01D00:00:00.000000000 2000.01.01D00:00:00.000000001"
        );
        assert_eq!(vecs(Vector::Timestamp(vec![0, NN])), "2000.01.01D00:00:00.000000000 0N");
        assert_eq!(vecs(Vector::Timestamp(vec![NN, NN])), "0N 0Np");
        assert_eq!(vecs(Vector::Timestamp(vec![0])), ",2000.01.01D00:00:00.000000000");
        assert_eq!(vecs(Vector::Timestamp(vec![NN])), ",0Np");
        assert_eq!(vecs(Vector::Timestamp(vec![])), "`timestamp$()");
        assert_eq!(vecs(Vector::Month(vec![0, 1])), "2000.01 2000.02m");
        assert_eq!(vecs(Vector::Month(vec![240, 235])), "2020.01 2019.08m");
        assert_eq!(vecs(Vector::Month(vec![0])), ",2000.01m");
        assert_eq!(vecs(Vector::Month(vec![])), "`month$()");
        assert_eq!(vecs(Vector::Date(vec![0, 1])), "2000.01.01 2000.01.02");
        assert_eq!(vecs(Vector::Date(vec![0, NI, 2])), "2000.01.01 0N 2000.01.03");
        assert_eq!(vecs(Vector::Date(vec![NI, NI])), "0N 0Nd");
        assert_eq!(vecs(Vector::Date(vec![NI, WI])), "0N 0Wd");
        assert_eq!(vecs(Vector::Date(vec![])), "`date$()");
        assert_eq!(vecs(Vector::Datetime(vec![0.0, 0.5])), "2000.01.01T00:00:00.000 2000.01.01T12:00:00.000");
        assert_eq!(vecs(Vector::Datetime(vec![])), "`datetime$()");
        assert_eq!(vecs(Vector::Timespan(vec![0, 1])), "0D00:00:00.000000000 0D00:00:00.000000001");
        assert_eq!(vecs(Vector::Timespan(vec![NN, NN])), "0N 0Nn");
        assert_eq!(vecs(Vector::Minute(vec![0, 1])), "00:00 00:01");
        assert_eq!(vecs(Vector::Minute(vec![1_244, 5_321])), "20:44 88:41");
        assert_eq!(vecs(Vector::Minute(vec![NI, NI])), "0N 0Nu");
        assert_eq!(vecs(Vector::Second(vec![34_523, 654_234])), "09:35:23 181:43:54");
        assert_eq!(vecs(Vector::Time(vec![0, 1])), "00:00:00.000 00:00:00.001");
        assert_eq!(vecs(Vector::Time(vec![0])), ",00:00:00.000");
        assert_eq!(vecs(Vector::Time(vec![])), "`time$()");
    }

    #[test]
    fn attributes() {
        assert_eq!(show(&K::Vector(Attr::Sorted, Vector::Long(vec![1, 2, 3]))), "`s#1 2 3");
        assert_eq!(
            show(&K::Vector(Attr::Unique, Vector::Symbol(["a", "b"].into_iter().collect()))),
            "`u#`a`b"
        );
        assert_eq!(show(&K::Vector(Attr::Parted, Vector::Long(vec![1, 1, 2]))), "`p#1 1 2");
        assert_eq!(show(&K::Vector(Attr::Grouped, Vector::Int(vec![1]))), "`g#,1i");
        assert_eq!(show(&K::Vector(Attr::Sorted, Vector::Long(vec![]))), "`s#`long$()");
    }

    #[test]
    fn general_lists() {
        let mixed = K::list(vec![K::long(1), K::sym("a"), K::Atom(Atom::Char(b'b'))]);
        assert_eq!(show(&mixed), "1\n`a\n\"b\"");
        assert_eq!(s1(&mixed), "(1;`a;\"b\")");
        let with_string = K::list(vec![K::long(1), K::sym("a"), K::string("bc")]);
        assert_eq!(show(&with_string), "1\n`a\n\"bc\"");
        assert_eq!(s1(&with_string), "(1;`a;\"bc\")");
        assert_eq!(show(&K::list(vec![])), "()");
        assert_eq!(s1(&K::list(vec![])), "()");
        // same-length lists print as a left-aligned matrix
        let m = K::list(vec![longs(&[1, 2]), longs(&[3, 4])]);
        assert_eq!(show(&m), "1 2\n3 4");
        assert_eq!(s1(&m), "(1 2;3 4)");
        assert_eq!(show(&K::list(vec![longs(&[1, 10]), longs(&[100, 2])])), "1   10\n100 2 ");
        // 3 dbl\2 7 from the iterators page
        let dbl = K::list(vec![longs(&[2, 7]), longs(&[4, 14]), longs(&[8, 28]), longs(&[16, 56])]);
        assert_eq!(show(&dbl), "2  7 \n4  14\n8  28\n16 56");
        assert_eq!(show(&K::list(vec![K::syms(["a", "b"]), K::syms(["c", "d"])])), "a b\nc d");
        assert_eq!(
            show(&K::list(vec![
                K::list(vec![K::long(1), K::sym("a")]),
                K::list(vec![K::long(2), K::sym("b")])
            ])),
            "1 `a\n2 `b"
        );
        // lengths differ, or strings/booleans/bytes: one item per line
        assert_eq!(show(&K::list(vec![longs(&[1, 2]), longs(&[3, 4, 5])])), "1 2\n3 4 5");
        assert_eq!(show(&K::list(vec![K::string("ab"), K::string("cd")])), "\"ab\"\n\"cd\"");
        assert_eq!(s1(&K::list(vec![K::string("ab"), K::string("cd")])), "(\"ab\";\"cd\")");
        // (945;enlist 945 975)
        assert_eq!(show(&K::list(vec![K::long(945), K::list(vec![longs(&[945, 975])])])), "945\n,945 975");
        // 5 enlist\1 (first three)
        let nested = K::list(vec![K::long(1), longs(&[1]), K::list(vec![longs(&[1])])]);
        assert_eq!(show(&nested), "1\n,1\n,,1");
        assert_eq!(show(&K::list(vec![K::long(1), K::list(vec![K::long(2), K::sym("a")])])), "1\n(2;`a)");
        // enlist (::) prints ::, a lone (::) prints nothing
        assert_eq!(show(&K::list(vec![K::GenericNull])), "::");
        assert_eq!(s1(&K::list(vec![K::GenericNull])), ",::");
        assert_eq!(s1(&K::list(vec![K::long(1), K::GenericNull])), "(1;::)");
        // string x of (2 3;"abc")
        let strings = K::list(vec![
            K::list(vec![K::string("2"), K::string("3")]),
            K::list(vec![K::string("a"), K::string("b"), K::string("c")]),
        ]);
        assert_eq!(show(&strings), "(,\"2\";,\"3\")\n(,\"a\";,\"b\";,\"c\")");
    }

    #[test]
    fn generic_null_and_errors() {
        assert_eq!(show(&K::GenericNull), "");
        assert_eq!(s1(&K::GenericNull), "::");
        assert_eq!(show(&K::error("type")), "'type");
        assert_eq!(show(&K::error("unknown service: FX")), "'unknown service: FX");
        assert_eq!(s1(&K::list(vec![K::long(1), K::error("rank")])), "(1;'rank)");
    }

    #[test]
    fn functions() {
        // {x+y} as q serializes it: 100, context "", char vector
        let lambda =
            K::Function(Function { raw: Bytes::from_static(b"\x64\x00\x0a\x00\x05\x00\x00\x00{x+y}") });
        assert_eq!(show(&lambda), "{x+y}");
        assert_eq!(s1(&K::list(vec![lambda.clone(), K::long(1)])), "({x+y};1)");
        let multi = K::Function(Function {
            raw: Bytes::from_static(b"\x64\x00\x0a\x00\x0b\x00\x00\x00{a:1;\n a+x}"),
        });
        assert_eq!(show(&multi), "{a:1;\n a+x}");
        let plus = K::Function(Function { raw: Bytes::from_static(b"\x66\x01") });
        assert_eq!(show(&plus), "<function type 102>");
        let identity = K::Function(Function { raw: Bytes::from_static(b"\x65\x00") });
        assert_eq!(s1(&identity), "::");
    }

    #[test]
    fn dictionaries() {
        let d = K::dict(K::syms(["a", "b"]), longs(&[1, 2]));
        assert_eq!(show(&d), "a| 1\nb| 2");
        assert_eq!(s1(&d), "`a`b!1 2");
        let d = K::dict(K::syms(["a", "bcd"]), K::syms(["x", "y"]));
        assert_eq!(show(&d), "a  | x\nbcd| y");
        assert_eq!(s1(&d), "`a`bcd!`x`y");
        let d = K::dict(K::syms(["a", "b"]), K::list(vec![longs(&[1, 2]), longs(&[3, 4])]));
        assert_eq!(show(&d), "a| 1 2\nb| 3 4");
        assert_eq!(s1(&d), "`a`b!(1 2;3 4)");
        let d = K::dict(K::syms(["a", "b"]), K::list(vec![longs(&[1, 2]), longs(&[3, 4, 5])]));
        assert_eq!(show(&d), "a| 1 2\nb| 3 4 5");
        let d = K::dict(K::syms(["a", "b"]), K::list(vec![K::long(1), K::sym("x")]));
        assert_eq!(show(&d), "a| 1\nb| `x");
        let d = K::dict(K::syms(["a", "b"]), K::list(vec![K::string("ab"), K::string("cd")]));
        assert_eq!(show(&d), "a| \"ab\"\nb| \"cd\"");
        assert_eq!(show(&K::dict(K::syms(["a", "b"]), K::string("xy"))), "a| x\nb| y");
        // string `a`b`c!2002 2004 2010
        let d = K::dict(
            K::syms(["a", "b", "c"]),
            K::list(vec![K::string("2002"), K::string("2004"), K::string("2010")]),
        );
        assert_eq!(show(&d), "a| \"2002\"\nb| \"2004\"\nc| \"2010\"");
        // nulls are blank, floats have no suffix, booleans are digits
        let d = K::dict(K::syms(["x", "y"]), K::from(Vector::Float(vec![1.0, f64::NAN])));
        assert_eq!(show(&d), "x| 1\ny| ");
        let d = K::dict(K::syms(["x", "y"]), K::from(Vector::Boolean(vec![true, false])));
        assert_eq!(show(&d), "x| 1\ny| 0");
        // the datatypes page's noon example
        let noon = K::dict(
            K::syms(["minutes", "seconds", "nanoseconds"]),
            K::list(vec![
                K::Atom(Atom::Minute(720)),
                K::Atom(Atom::Second(43_200)),
                K::Atom(Atom::Timespan(43_200 * 1_000_000_000)),
            ]),
        );
        assert_eq!(
            show(&noon),
            "minutes    | 12:00\nseconds    | 12:00:00\nnanoseconds| 0D12:00:00.000000000"
        );
        let d = K::dict(longs(&[10, 20, 30]), K::from(Vector::Int(vec![50, 60, 70])));
        assert_eq!(s1(&d), "10 20 30!50 60 70i");
        assert_eq!(show(&d), "10| 50\n20| 60\n30| 70");
        // one-line forms that need parentheses
        let d = K::dict(K::syms(["a"]), longs(&[1]));
        assert_eq!(s1(&d), "(,`a)!,1");
        assert_eq!(show(&d), "a| 1");
        // enlist[`a]!`t: an atom value prints in the one-line form
        assert_eq!(show(&K::dict(K::syms(["a"]), K::sym("t"))), "(,`a)!`t");
        let empty = K::dict(K::list(vec![]), K::list(vec![]));
        assert_eq!(s1(&empty), "()!()");
        assert_eq!(show(&empty), "()!()");
        let typed = K::dict(K::syms(Vec::<&str>::new()), K::from(Vector::Float(vec![])));
        assert_eq!(show(&typed), "(`symbol$())!`float$()");
        let sorted = K::Dict(Box::new(Dict {
            keys: K::Vector(Attr::Sorted, Vector::Symbol(["a", "b"].into_iter().collect())),
            values: K::from(Vector::Int(vec![2, 3])),
            sorted: true,
        }));
        assert_eq!(s1(&sorted), "`s#`a`b!2 3i");
        assert_eq!(show(&sorted), "a| 2\nb| 3");
    }

    #[test]
    fn tables() {
        let t = table(&["a", "b"], vec![longs(&[1, 2]), K::syms(["x", "y"])]);
        assert_eq!(show(&t), "a b\n---\n1 x\n2 y");
        assert_eq!(s1(&t), "+`a`b!(1 2;`x`y)");
        // columns padded to the widest cell, the last too; nulls blank
        let t = table(&["a", "b"], vec![longs(&[1, NN, 300]), K::syms(["xyz", "", "w"])]);
        assert_eq!(show(&t), "a   b  \n-------\n1   xyz\n       \n300 w  ");
        let t = table(&["c"], vec![K::string("ab")]);
        assert_eq!(show(&t), "c\n-\na\nb");
        assert_eq!(s1(&t), "+(,`c)!,\"ab\"");
        let t = table(&["a"], vec![K::list(vec![K::string("ab"), K::string("cd")])]);
        assert_eq!(show(&t), "a   \n----\n\"ab\"\n\"cd\"");
        let t = table(&["a"], vec![longs(&[])]);
        assert_eq!(show(&t), "a\n-");
        assert_eq!(s1(&t), "+(,`a)!,`long$()");
        assert_eq!(s1(&table(&["a"], vec![longs(&[1])])), "+(,`a)!,,1");
        // 10#trade from the MATLAB page (first rows)
        let trade = table(
            &["sec", "price", "volume", "exchange", "date"],
            vec![
                K::syms(["ACME", "ABC"]),
                K::from(Vector::Float(vec![89.5897, 4.346879])),
                longs(&[1300, 2000]),
                K::from(Vector::Float(vec![6.58303, 5.957694])),
                K::from(Vector::Date(vec![1_942, 1_528])),
            ],
        );
        assert_eq!(
            show(&trade),
            "sec  price    volume exchange date      \n\
             ----------------------------------------\n\
             ACME 89.5897  1300   6.58303  2005.04.26\n\
             ABC  4.346879 2000   5.957694 2004.03.08"
        );
        // string ([]a:1 2 3;b:`ibm`goog`aapl)
        let t = table(
            &["a", "b"],
            vec![
                K::list(vec![K::string("1"), K::string("2"), K::string("3")]),
                K::list(vec![K::string("ibm"), K::string("goog"), K::string("aapl")]),
            ],
        );
        assert_eq!(show(&t), "a    b     \n-----------\n,\"1\" \"ibm\" \n,\"2\" \"goog\"\n,\"3\" \"aapl\"");
        // enlist `a`b`c!(1;2 3;4)
        let t = table(&["a", "b", "c"], vec![longs(&[1]), K::list(vec![longs(&[2, 3])]), longs(&[4])]);
        assert_eq!(show(&t), "a b   c\n-------\n1 2 3 4");
        let sorted = K::Table(Table {
            attr: Attr::Sorted,
            ..match table(&["a"], vec![longs(&[1, 2])]) {
                K::Table(t) => t,
                _ => unreachable!(),
            }
        });
        assert_eq!(s1(&sorted), "`s#+(,`a)!,1 2");
    }

    #[test]
    fn keyed_tables() {
        let kt = keyed(table(&["a"], vec![longs(&[1, 2])]), table(&["b"], vec![K::syms(["x", "y"])]));
        assert_eq!(show(&kt), "a| b\n-| -\n1| x\n2| y");
        assert_eq!(s1(&kt), "(+(,`a)!,1 2)!+(,`b)!,`x`y");
        // the temporal-data page's phone book
        let ph = keyed(
            table(
                &["name", "date"],
                vec![K::syms(["Bill", "John", "John"]), K::from(Vector::Date(vec![0, 0, 161]))],
            ),
            table(&["phone"], vec![longs(&[4444, 5555, 4444])]),
        );
        assert_eq!(
            show(&ph),
            "name date      | phone\n\
             ---------------| -----\n\
             Bill 2000.01.01| 4444 \n\
             John 2000.01.01| 5555 \n\
             John 2000.06.10| 4444 "
        );
        // .Q.s ([h:1 2 3] m: 4 5 6) from the .Q page
        let hm = keyed(table(&["h"], vec![longs(&[1, 2, 3])]), table(&["m"], vec![longs(&[4, 5, 6])]));
        assert_eq!(Console::DEFAULT.render(&hm) + "\n", "h| m\n-| -\n1| 4\n2| 5\n3| 6\n");
        // a key column of strings (from the functional-qSQL page)
        let kt = keyed(
            table(&["one"], vec![K::list(vec![K::string("a"), K::string("b")])]),
            table(&["c1", "c2"], vec![K::syms(["a", "b"]), longs(&[40, 20])]),
        );
        assert_eq!(show(&kt), "one | c1 c2\n----| -----\n,\"a\"| a  40\n,\"b\"| b  20");
        let empty = keyed(table(&["a"], vec![longs(&[])]), table(&["b"], vec![longs(&[])]));
        assert_eq!(show(&empty), "a| b\n-| -");
    }

    #[test]
    fn enumerations() {
        let e = K::Enumeration(Enumeration {
            ty: 20,
            domain: Bytes::from_static(b"sym"),
            attr: Attr::None,
            indices: vec![0, 1],
        });
        assert_eq!(show(&e), "`sym!0 1");
        let t = table(&["s"], vec![e]);
        assert_eq!(show(&t), "s\n-\n0\n1");
    }

    #[test]
    fn console_truncates_long_lines() {
        let til100: Vec<i64> = (0..100).collect();
        // the MATLAB page's `c:(til 100;til 100)` at \c 25 80
        let line = "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 ..";
        assert_eq!(line.len(), 79);
        assert_eq!(show(&longs(&til100)), line);
        assert_eq!(show(&K::list(vec![longs(&til100), longs(&til100)])), format!("{line}\n{line}"));
        // exactly 79 characters fit
        let fits: String = "x".repeat(77);
        assert_eq!(show(&K::string(&fits)), format!("\"{fits}\""));
        let over: String = "x".repeat(78);
        assert_eq!(show(&K::string(&over)), format!("\"{}..", "x".repeat(76)));
        // {:#} prints whole
        let whole = format!("{:#}", longs(&til100));
        assert_eq!(whole.len(), 289);
        assert!(whole.ends_with("98 99"));
        // a huge vector costs what is shown
        let big = longs(&vec![1; 10_000_000]);
        assert_eq!(show(&big).len(), 79);
    }

    #[test]
    fn console_truncates_rows() {
        // \c 10 10: til each 20+til 10, from the system-commands page
        let c = Console::new(5, 5);
        assert_eq!(c, Console { rows: 10, cols: 10 });
        let lists = K::list((0..10).map(|i| longs(&(0..20 + i).collect::<Vec<_>>())).collect());
        let expected = ["0 1 2 3.."; 7].join("\n") + "\n..";
        assert_eq!(c.render(&lists), expected);
        // a keyed table at \c 10 10 (pykx's test): 5 rows and ..
        let idx: Vec<i64> = (0..100).collect();
        let xs: Vec<&str> = (0..100).map(|i| ["bar", "qux", "bar", "bar", "foo"][i % 5]).collect();
        let kt = keyed(
            table(&["idx"], vec![longs(&idx)]),
            table(&["x", "y"], vec![K::syms(xs), K::from(Vector::Float(vec![1.0; 100]))]),
        );
        assert_eq!(
            c.render(&kt),
            "idx| x ..\n---| --..\n0  | ba..\n1  | qu..\n2  | ba..\n3  | ba..\n4  | fo..\n.."
        );
        // \c 25 80: a table shows 20 rows, header and rule, then ..
        let t = table(&["a"], vec![longs(&idx)]);
        let shown = show(&t);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 23);
        assert_eq!(lines[..3], ["a ", "--", "0 "]);
        assert_eq!(lines[21], "19");
        assert_eq!(lines[22], "..");
        // 21 rows fit exactly
        let t21 = table(&["a"], vec![longs(&idx[..21])]);
        assert_eq!(show(&t21).lines().count(), 23);
        assert!(!show(&t21).contains(".."));
        // a list shows 22 items and ..; 23 fit
        let items = K::list((0..30).map(K::long).collect());
        let shown = show(&items);
        assert_eq!(shown.lines().count(), 23);
        assert!(shown.ends_with("\n21\n.."));
        let items23 = K::list((0..23).map(K::long).collect());
        assert_eq!(show(&items23).lines().count(), 23);
        // a dictionary likewise
        let d = K::dict(longs(&idx), longs(&idx));
        assert!(show(&d).ends_with("\n21| 21\n.."));
        assert_eq!(Console::UNLIMITED.render(&d).lines().count(), 100);
    }

    #[test]
    fn wide_cells_push_later_columns_off_screen() {
        let t = table(&["a", "b"], vec![K::list(vec![K::string("x".repeat(200))]), longs(&[1])]);
        let shown = show(&t);
        for line in shown.lines() {
            assert_eq!(line.chars().count(), 79, "{line}");
            assert!(line.ends_with(".."));
        }
    }

    #[test]
    fn atom_display_matches_k() {
        assert_eq!(Atom::Int(3).to_string(), "3i");
        assert_eq!(Atom::Date(0).to_string(), "2000.01.01");
        let long_sym = "s".repeat(100);
        assert_eq!(Atom::Symbol(Bytes::from(long_sym.clone())).to_string().len(), 79);
        assert_eq!(format!("{:#}", Atom::Symbol(Bytes::from(long_sym.clone()))), format!("`{long_sym}"));
    }

    #[test]
    fn display_into_formatter_with_padding_ignored() {
        // Display writes straight into the formatter
        let mut s = String::new();
        write!(s, "[{}]", longs(&[1, 2])).unwrap();
        assert_eq!(s, "[1 2]");
    }

    #[test]
    fn raw_objects_are_decoded() {
        let raw = K::Raw(crate::RawObject::encode(&longs(&[1, 2, 3])));
        assert_eq!(show(&raw), "1 2 3");
        assert_eq!(s1(&K::list(vec![raw.clone(), K::long(4)])), "(1 2 3;4)");
        // a long vector that claims 5 items and carries none
        let bad = K::Raw(crate::RawObject::new(Bytes::from_static(&[7, 0, 5, 0, 0, 0]), true));
        assert!(show(&bad).starts_with("'decode: "), "{}", show(&bad));
    }

    fn decoded(hex: &str) -> K {
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        crate::decode::decode_body(&bytes, true).unwrap()
    }

    #[test]
    fn decoded_wire_objects() {
        // bodies of the serialization page's golden messages
        assert_eq!(show(&decoded("64000a00050000007b782b797d")), "{x+y}");
        assert_eq!(show(&decoded("6500")), "");
        assert_eq!(show(&decoded("fa01000000")), "1i");
        assert_eq!(show(&decoded("06000100000001000000")), ",1i");
        assert_eq!(show(&decoded("0400050000000001020304")), "0x0001020304");
        assert_eq!(show(&decoded("630b0002000000610062000600020000000200000003000000")), "a| 2\nb| 3");
        assert_eq!(s1(&decoded("7f0b0102000000610062000600020000000200000003000000")), "`s#`a`b!2 3i");
        assert_eq!(
            show(&decoded("6200630b0002000000610062000000020000000600010000000200000006000100000003000000")),
            "a b\n---\n2 3"
        );
        assert_eq!(
            show(&decoded(
                "636200630b00010000006100000001000000060001000000020000006200630b0001000000620000000100000006000100000003000000"
            )),
            "a| b\n-| -\n2| 3"
        );
        assert_eq!(show(&decoded("000003000000f90100000000000000f56100f662")), "1\n`a\n\"b\"");
        assert_eq!(show(&decoded("000000000000")), "()");
        assert_eq!(show(&decoded("807479706500")), "'type");
    }
}
