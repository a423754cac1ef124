//! Every golden fixture (tests/fixtures/golden.json, written by KX's own
//! serializer through scripts/gen_golden.py) decodes to the value built here
//! by hand, and encodes back to the same bytes, byte for byte.

mod common;

use bytes::Bytes;
use common::{golden, hex, same};
use qmesh_codec::{
    Atom, Attr, Dict, EncodeOptions, Function, K, Message, MsgType, Symbols, Table, Vector, encode_message,
    nulls, object_extent,
};

const GUID: [u8; 16] =
    [0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78];
const DAY_NS: i64 = 86_400_000_000_000;

fn a(atom: Atom) -> K {
    K::Atom(atom)
}

fn v(vector: Vector) -> K {
    K::Vector(Attr::None, vector)
}

fn func(hex_body: &str) -> K {
    K::Function(Function { raw: Bytes::from(common::unhex(hex_body)) })
}

fn dict(keys: K, values: K) -> K {
    K::dict(keys, values)
}

fn table(names: &[&str], columns: Vec<K>) -> Table {
    Table { attr: Attr::None, names: names.iter().collect::<Symbols>(), columns }
}

fn ints(x: &[i32]) -> K {
    v(Vector::Int(x.to_vec()))
}

fn longs(x: &[i64]) -> K {
    v(Vector::Long(x.to_vec()))
}

/// `([]a:enlist 2i;b:enlist 3i)` and friends.
fn table_ab_ints() -> Table {
    table(&["a", "b"], vec![ints(&[2]), ints(&[3])])
}

fn trade_table() -> K {
    K::Table(table(
        &["time", "sym", "price", "size"],
        vec![
            v(Vector::Timestamp(vec![0, 1, 1_000_000_000])),
            K::syms(["AAPL", "MSFT", "AAPL"]),
            v(Vector::Float(vec![1.5, 2.25, f64::NAN])),
            longs(&[100, 200, 300]),
        ],
    ))
}

/// The four "null, +inf, -inf" patterns for a type of `bits` width, with 0
/// and 1 first, as the `*_vec_nulls` fixtures hold them.
fn i32_specials() -> Vec<i32> {
    vec![0, 1, nulls::INT_NULL, nulls::INT_INF, -nulls::INT_INF]
}

fn i64_specials() -> Vec<i64> {
    vec![0, 1, nulls::LONG_NULL, nulls::LONG_INF, -nulls::LONG_INF]
}

/// The value each fixture holds.
fn expected(name: &str) -> Option<K> {
    use Atom as A;
    Some(match name {
        "bool_true" => a(A::Boolean(true)),
        "bool_false" => a(A::Boolean(false)),
        "guid" | "be_guid" => a(A::Guid(GUID)),
        "guid_null" => a(A::Guid(nulls::GUID_NULL)),
        "byte" => a(A::Byte(5)),
        "short" => a(A::Short(5)),
        "int" => a(A::Int(5)),
        "long" | "sync_long" | "response_long" => K::long(1),
        "long_neg" => K::long(-2),
        "real" => a(A::Real(1.5)),
        "float" => a(A::Float(1.5)),
        "char" => a(A::Char(b'a')),
        "char_null" => a(A::Char(nulls::CHAR_NULL)),
        "symbol" => K::sym("abc"),
        "symbol_null" => K::sym(""),
        "timestamp" => a(A::Timestamp(DAY_NS)),
        "month" => a(A::Month(1)),
        "date" => a(A::Date(1)),
        "datetime" => a(A::Datetime(1.5)),
        "timespan" => a(A::Timespan(1_000_000_000)),
        "minute" => a(A::Minute(5)),
        "second" => a(A::Second(5)),
        "time" => a(A::Time(5)),

        "short_null" => a(A::Short(nulls::SHORT_NULL)),
        "short_inf" => a(A::Short(nulls::SHORT_INF)),
        "short_neginf" => a(A::Short(-nulls::SHORT_INF)),
        "int_null" => a(A::Int(nulls::INT_NULL)),
        "int_inf" => a(A::Int(nulls::INT_INF)),
        "int_neginf" => a(A::Int(-nulls::INT_INF)),
        "long_null" => K::long(nulls::LONG_NULL),
        "long_inf" => K::long(nulls::LONG_INF),
        "long_neginf" => K::long(-nulls::LONG_INF),
        "timestamp_null" => a(A::Timestamp(nulls::LONG_NULL)),
        "timestamp_inf" => a(A::Timestamp(nulls::LONG_INF)),
        "timestamp_neginf" => a(A::Timestamp(-nulls::LONG_INF)),
        "timespan_null" => a(A::Timespan(nulls::LONG_NULL)),
        "timespan_inf" => a(A::Timespan(nulls::LONG_INF)),
        "timespan_neginf" => a(A::Timespan(-nulls::LONG_INF)),
        "month_null" => a(A::Month(nulls::INT_NULL)),
        "month_inf" => a(A::Month(nulls::INT_INF)),
        "month_neginf" => a(A::Month(-nulls::INT_INF)),
        "date_null" => a(A::Date(nulls::INT_NULL)),
        "date_inf" => a(A::Date(nulls::INT_INF)),
        "date_neginf" => a(A::Date(-nulls::INT_INF)),
        "minute_null" => a(A::Minute(nulls::INT_NULL)),
        "minute_inf" => a(A::Minute(nulls::INT_INF)),
        "minute_neginf" => a(A::Minute(-nulls::INT_INF)),
        "second_null" => a(A::Second(nulls::INT_NULL)),
        "second_inf" => a(A::Second(nulls::INT_INF)),
        "second_neginf" => a(A::Second(-nulls::INT_INF)),
        "time_null" => a(A::Time(nulls::INT_NULL)),
        "time_inf" => a(A::Time(nulls::INT_INF)),
        "time_neginf" => a(A::Time(-nulls::INT_INF)),
        "real_null" => a(A::Real(f32::NAN)),
        "real_inf" => a(A::Real(f32::INFINITY)),
        "real_neginf" => a(A::Real(f32::NEG_INFINITY)),
        "float_null" => a(A::Float(f64::NAN)),
        "float_inf" => a(A::Float(f64::INFINITY)),
        "float_neginf" => a(A::Float(f64::NEG_INFINITY)),
        "datetime_null" => a(A::Datetime(f64::NAN)),
        "datetime_inf" => a(A::Datetime(f64::INFINITY)),
        "datetime_neginf" => a(A::Datetime(f64::NEG_INFINITY)),

        "bool_vec" => v(Vector::Boolean(vec![true, false, true])),
        "list_of_guids" => K::list(vec![a(A::Guid(GUID)), a(A::Guid(nulls::GUID_NULL))]),
        "guid_vec" => v(Vector::Guid(vec![GUID, nulls::GUID_NULL])),
        "byte_vec" => v(Vector::Byte(vec![0, 1, 2, 3, 4])),
        "short_vec" => v(Vector::Short(vec![1, nulls::SHORT_NULL, nulls::SHORT_INF, -nulls::SHORT_INF])),
        "int_vec" => ints(&[1, nulls::INT_NULL, nulls::INT_INF, -nulls::INT_INF]),
        "long_vec" | "be_long_vec" | "longcount_long_vec" => longs(&[1, 2, 3]),
        "long_vec_nulls" => longs(&[1, nulls::LONG_NULL, nulls::LONG_INF, -nulls::LONG_INF]),
        "long_vec_empty" => longs(&[]),
        "real_vec" => v(Vector::Real(vec![1.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY])),
        "float_vec" | "be_float_vec" => {
            v(Vector::Float(vec![1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]))
        }
        "char_vec" => K::string("ab"),
        "char_vec_empty" => K::string(""),
        "symbol_vec" => K::syms(["a", "b"]),
        "symbol_vec_nulls" => K::syms(["a", "", "bc"]),
        "symbol_vec_empty" => K::syms(Vec::<&str>::new()),
        "timestamp_vec" => v(Vector::Timestamp(vec![DAY_NS, 1])),
        "date_vec" => v(Vector::Date(vec![1, -1])),
        "month_vec" => v(Vector::Month(vec![1, -1])),
        "timespan_vec" => v(Vector::Timespan(vec![1, -1])),
        "month_vec_nulls" => v(Vector::Month(i32_specials())),
        "date_vec_nulls" => v(Vector::Date(i32_specials())),
        "minute_vec_nulls" => v(Vector::Minute(i32_specials())),
        "second_vec_nulls" => v(Vector::Second(i32_specials())),
        "time_vec_nulls" => v(Vector::Time(i32_specials())),
        "timestamp_vec_nulls" => v(Vector::Timestamp(i64_specials())),
        "timespan_vec_nulls" => v(Vector::Timespan(i64_specials())),
        "datetime_vec" => v(Vector::Datetime(vec![1.5, f64::INFINITY, f64::NEG_INFINITY])),

        "attr_sorted_long_vec" => K::Vector(Attr::Sorted, Vector::Long(vec![1, 2, 3])),
        "attr_unique_long_vec" => K::Vector(Attr::Unique, Vector::Long(vec![1, 2, 3])),
        "attr_parted_long_vec" => K::Vector(Attr::Parted, Vector::Long(vec![1, 1, 3])),
        "attr_grouped_long_vec" => K::Vector(Attr::Grouped, Vector::Long(vec![1, 2, 1])),
        "attr_sorted_symbol_vec" => K::Vector(Attr::Sorted, Vector::Symbol(["a", "b"].into_iter().collect())),
        "attr_unique_list" => K::List(Attr::Unique, vec![K::long(1), K::long(2)]),

        "list_mixed" | "be_list_mixed" => K::list(vec![K::long(1), K::sym("a"), a(A::Char(b'b'))]),
        "list_empty" => K::list(vec![]),
        "list_nested" => K::list(vec![
            K::list(vec![K::long(1), K::long(2)]),
            K::list(vec![K::string("xy"), K::sym("s")]),
            K::list(vec![]),
        ]),
        "list_of_bytes" => K::list(vec![v(Vector::Byte(vec![0, 1, 2, 3, 4]))]),
        "generic_null" => K::GenericNull,

        "dict" => dict(K::syms(["a", "b"]), K::list(vec![K::long(1), K::long(2)])),
        "dict_ints" | "be_dict_ints" => dict(K::syms(["a", "b"]), ints(&[2, 3])),
        "sorted_dict" => K::Dict(Box::new(Dict {
            keys: K::Vector(Attr::Sorted, Vector::Symbol(["a", "b"].into_iter().collect())),
            values: ints(&[2, 3]),
            sorted: true,
        })),
        "dict_of_lists" => dict(K::syms(["a", "b"]), K::list(vec![ints(&[2]), ints(&[3])])),
        "table_ints" => K::Table(table_ab_ints()),
        "table_sorted" => {
            // `s#([]a:,2i;b:,3i): the table's attribute, and `p# on its first column
            let mut t = table_ab_ints();
            t.attr = Attr::Sorted;
            t.columns[0] = K::Vector(Attr::Parted, Vector::Int(vec![2]));
            K::Table(t)
        }
        "keyed_table_ints" | "keyed_table_sorted" => K::Dict(Box::new(Dict {
            keys: K::Table(Table {
                attr: if name == "keyed_table_sorted" { Attr::Sorted } else { Attr::None },
                ..table(&["a"], vec![ints(&[2])])
            }),
            values: K::Table(table(&["b"], vec![ints(&[3])])),
            sorted: name == "keyed_table_sorted",
        })),
        "table" => K::Table(table(&["a", "b"], vec![longs(&[1, 2]), K::syms(["x", "y"])])),
        "keyed_table" => {
            dict(K::Table(table(&["a"], vec![longs(&[1, 2])])), K::Table(table(&["b"], vec![longs(&[3, 4])])))
        }
        "trade_table" => trade_table(),
        "upd_message" => K::list(vec![K::sym("upd"), K::sym("trade"), trade_table()]),

        "error" => K::error("type"),
        "lambda" => func("64000a00050000007b782b797d"),
        "lambda_ctx" => func("6464000a00050000007b782b797d"),
        "unary_primitive" => func("6501"),
        "operator" => func("6601"),
        "iterator" => func("6700"),
        "composition" => func("690200000065016502"),
        "each_operator" => func("6a6601"),
        "over_operator" => func("6b6601"),
        "projection" => func("680200000066016500"),

        "large_long_vec" => longs(&(0..140_000).collect::<Vec<i64>>()),
        "compressed_bool_2000" => v(Vector::Boolean(vec![true; 2000])),
        _ => return None,
    })
}

/// Decode-only fixtures and the case whose bytes they encode to.
fn canonical(name: &str) -> &str {
    match name {
        "be_long_vec" | "longcount_long_vec" => "long_vec",
        "be_list_mixed" => "list_mixed",
        "be_dict_ints" => "dict_ints",
        "be_float_vec" => "float_vec",
        "be_guid" => "guid",
        other => other,
    }
}

#[test]
fn every_fixture_decodes_to_its_value_and_encodes_back_byte_for_byte() {
    let fixtures = golden();
    assert!(fixtures.len() >= 130, "golden.json has only {} cases", fixtures.len());
    for (name, bytes) in &fixtures {
        let want =
            expected(name).unwrap_or_else(|| panic!("fixture {name} has no expected value in golden.rs"));
        let frame = Bytes::from(bytes.clone());
        let msg = Message::from_frame(frame, u64::MAX).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = msg.decode().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(same(&got, &want), "{name}: decoded {got:?}, expected {want:?}");

        let body = msg.body();
        assert_eq!(
            object_extent(body, msg.header.little_endian).unwrap(),
            body.len(),
            "{name}: object_extent"
        );

        let target = &fixtures[canonical(name)];
        let opts = EncodeOptions { capability: 6, compress: bytes[2] != 0 };
        for (what, k) in [("decoded", &got), ("expected", &want), ("raw", &K::Raw(msg.as_object()))] {
            let ours = encode_message(msg.header.msg_type, k, opts).unwrap();
            // a little-endian raw object is passed on as it came, long count and all
            let target = if what == "raw" && name.starts_with("longcount_") { bytes } else { target };
            assert!(
                ours == *target,
                "{name}: encoding the {what} value\n ours {}\n kx   {}",
                hex(&ours),
                hex(target)
            );
        }
    }
}

#[test]
fn message_types_come_from_the_header() {
    let fixtures = golden();
    for (name, ty) in
        [("long", MsgType::Async), ("sync_long", MsgType::Sync), ("response_long", MsgType::Response)]
    {
        let m = Message::from_frame(Bytes::from(fixtures[name].clone()), 100).unwrap();
        assert_eq!(m.header.msg_type, ty, "{name}");
    }
}

#[test]
fn list_items_split_the_upd_message_without_decoding() {
    let fixtures = golden();
    let m = Message::from_frame(Bytes::from(fixtures["upd_message"].clone()), 1 << 20).unwrap();
    let items = m.list_items().unwrap();
    assert_eq!(items.iter().map(|i| i.ty()).collect::<Vec<_>>(), vec![-11, -11, 98]);
    assert!(same(&items[2].decode().unwrap(), &trade_table()));
}

#[test]
fn every_truncation_of_every_fixture_is_an_error() {
    for (name, bytes) in golden() {
        if bytes.len() > 4096 {
            continue;
        }
        let le = bytes[0] == 1;
        let body = &bytes[8..];
        if bytes[2] != 0 {
            continue;
        }
        for cut in 0..body.len() {
            assert!(qmesh_codec::decode_body(&body[..cut], le).is_err(), "{name} cut at {cut} decoded");
        }
    }
}
