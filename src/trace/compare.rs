//! `redact(to_value(item)) == expected` without building the serialised value.
//!
//! Replay compares every effect the core returns with the redacted JSON recorded for
//! it. Doing that through `serde_json::to_value` and `redact` allocates a map per
//! effect and made replay more than twice as slow as reading the file; this serializer
//! walks the recorded value instead, applies the redaction rules on the way, and stops
//! at the first difference. Its equality is exactly that of `to_value` then `redact`
//! (same key handling, same number rules); `tests/trace.rs` checks the two against each
//! other for every effect of a session, and the unit tests below for the odd cases.

use base64::Engine;
use serde::ser::{self, Serialize};
use serde_json::{Map, Value};

use super::redact::{OutputAlias, OutputSummary, REDACTED, redacted_url};

/// Which redaction applies below a point of the serialised tree. Redaction rewrites
/// three places only (see `redact`): `job.env` values, the URLs of `job.inputs` and
/// `job.outputs`, and the `event.data` of an output chunk, all fields of the effect
/// itself.
#[derive(Debug, Clone, Copy)]
pub enum Rule<'r> {
    Plain,
    /// The effect holds a `JobSpec` in `job`.
    JobHolder,
    /// The effect holds a list of job files in `outputs`.
    FilesHolder,
    JobSpec,
    /// A job's env map: keys as they are, every value `"<redacted>"`.
    EnvValues,
    /// `job.inputs` or `job.outputs`: a list of files.
    FileList,
    /// One of them.
    FileEntry,
    /// Its URL, recorded with its query redacted.
    FileUrl,
    /// The effect holds a `RunnerEvent::JobOutput` in `event`.
    OutputHolder(Option<&'r OutputAlias>),
    OutputEvent(Option<&'r OutputAlias>),
    /// Base64 output bytes, recorded as their summary.
    OutputData(Option<&'r OutputAlias>),
}

impl<'r> Rule<'r> {
    fn child(self, key: &str) -> Rule<'r> {
        match (self, key) {
            (Rule::JobHolder, "job") => Rule::JobSpec,
            (Rule::FilesHolder, "outputs") => Rule::FileList,
            (Rule::JobSpec, "env") => Rule::EnvValues,
            (Rule::JobSpec, "inputs" | "outputs") => Rule::FileList,
            (Rule::FileEntry, "url") => Rule::FileUrl,
            (Rule::OutputHolder(alias), "event") => Rule::OutputEvent(alias),
            (Rule::OutputEvent(alias), "data") => Rule::OutputData(alias),
            _ => Rule::Plain,
        }
    }
}

/// Whether `item` serialises to `expected` once `rule` is applied.
pub fn matches<T: Serialize + ?Sized>(item: &T, expected: &Value, rule: Rule<'_>) -> bool {
    item.serialize(Cmp {
        value: expected,
        rule,
    })
    .is_ok()
}

/// The only failure: the item is not the value.
#[derive(Debug)]
pub struct Mismatch;

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("differs from the recorded value")
    }
}

impl std::error::Error for Mismatch {}

impl ser::Error for Mismatch {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Mismatch
    }
}

fn check(ok: bool) -> Result<(), Mismatch> {
    if ok { Ok(()) } else { Err(Mismatch) }
}

struct Cmp<'a> {
    value: &'a Value,
    rule: Rule<'a>,
}

fn plain(value: &Value) -> Cmp<'_> {
    Cmp {
        value,
        rule: Rule::Plain,
    }
}

impl<'a> Cmp<'a> {
    fn object(&self) -> Result<&'a Map<String, Value>, Mismatch> {
        self.value.as_object().ok_or(Mismatch)
    }

    fn array(&self) -> Result<&'a Vec<Value>, Mismatch> {
        self.value.as_array().ok_or(Mismatch)
    }

    /// `{variant: inner}`, the externally tagged shape serde_json gives variants.
    fn variant(&self, variant: &str) -> Result<&'a Value, Mismatch> {
        let map = self.object()?;
        check(map.len() == 1)?;
        map.get(variant).ok_or(Mismatch)
    }

    /// Output bytes as base64: recorded as the summary of the decoded bytes.
    fn output_data(&self, text: &str, alias: Option<&OutputAlias>) -> Result<(), Mismatch> {
        let expected = self.object()?;
        let summary = match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(bytes) => OutputSummary::of(&bytes),
            Err(_) => OutputSummary::of(text.as_bytes()),
        };
        let summary = match alias {
            Some(alias) if alias.placeholder == summary => &alias.recorded,
            _ => &summary,
        };
        check(
            expected.len() == 2
                && expected.get("len").and_then(Value::as_u64) == Some(summary.len)
                && expected.get("fnv1a64").and_then(Value::as_str)
                    == Some(summary.fnv1a64.as_str()),
        )
    }
}

impl<'a> ser::Serializer for Cmp<'a> {
    type Ok = ();
    type Error = Mismatch;
    type SerializeSeq = SeqCmp<'a>;
    type SerializeTuple = SeqCmp<'a>;
    type SerializeTupleStruct = SeqCmp<'a>;
    type SerializeTupleVariant = SeqCmp<'a>;
    type SerializeMap = MapCmp<'a>;
    type SerializeStruct = MapCmp<'a>;
    type SerializeStructVariant = MapCmp<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Mismatch> {
        check(self.value.as_bool() == Some(v))
    }

    fn serialize_i8(self, v: i8) -> Result<(), Mismatch> {
        self.serialize_i64(i64::from(v))
    }

    fn serialize_i16(self, v: i16) -> Result<(), Mismatch> {
        self.serialize_i64(i64::from(v))
    }

    fn serialize_i32(self, v: i32) -> Result<(), Mismatch> {
        self.serialize_i64(i64::from(v))
    }

    fn serialize_i64(self, v: i64) -> Result<(), Mismatch> {
        check(self.value.is_i64() || self.value.is_u64())?;
        check(self.value.as_i64() == Some(v))
    }

    fn serialize_u8(self, v: u8) -> Result<(), Mismatch> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u16(self, v: u16) -> Result<(), Mismatch> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u32(self, v: u32) -> Result<(), Mismatch> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u64(self, v: u64) -> Result<(), Mismatch> {
        check(self.value.as_u64() == Some(v))
    }

    fn serialize_f32(self, v: f32) -> Result<(), Mismatch> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Mismatch> {
        // serde_json turns NaN and infinities into null.
        if v.is_finite() {
            check(self.value.is_f64() && self.value.as_f64() == Some(v))
        } else {
            check(self.value.is_null())
        }
    }

    fn serialize_char(self, v: char) -> Result<(), Mismatch> {
        let mut buf = [0u8; 4];
        self.serialize_str(v.encode_utf8(&mut buf))
    }

    fn serialize_str(self, v: &str) -> Result<(), Mismatch> {
        match self.rule {
            Rule::OutputData(alias) => self.output_data(v, alias),
            Rule::FileUrl => check(self.value.as_str() == Some(redacted_url(v).as_str())),
            _ => check(self.value.as_str() == Some(v)),
        }
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Mismatch> {
        let array = self.array()?;
        check(array.len() == v.len())?;
        for (byte, value) in v.iter().zip(array) {
            check(value.as_u64() == Some(u64::from(*byte)))?;
        }
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Mismatch> {
        check(self.value.is_null())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Mismatch> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Mismatch> {
        check(self.value.is_null())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Mismatch> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Mismatch> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Mismatch> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Mismatch> {
        value.serialize(plain(self.variant(variant)?))
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<SeqCmp<'a>, Mismatch> {
        let element = match self.rule {
            Rule::FileList => Rule::FileEntry,
            _ => Rule::Plain,
        };
        Ok(SeqCmp {
            items: self.array()?,
            next: 0,
            element,
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<SeqCmp<'a>, Mismatch> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqCmp<'a>, Mismatch> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqCmp<'a>, Mismatch> {
        plain(self.variant(variant)?).serialize_seq(Some(len))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<MapCmp<'a>, Mismatch> {
        Ok(MapCmp {
            map: self.object()?,
            rule: self.rule,
            seen: 0,
            key: None,
        })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapCmp<'a>, Mismatch> {
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapCmp<'a>, Mismatch> {
        plain(self.variant(variant)?).serialize_map(Some(len))
    }
}

pub struct SeqCmp<'a> {
    items: &'a [Value],
    next: usize,
    /// The rule for each element.
    element: Rule<'a>,
}

impl SeqCmp<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Mismatch> {
        let expected = self.items.get(self.next).ok_or(Mismatch)?;
        self.next += 1;
        value.serialize(Cmp {
            value: expected,
            rule: self.element,
        })
    }

    fn finish(self) -> Result<(), Mismatch> {
        check(self.next == self.items.len())
    }
}

impl ser::SerializeSeq for SeqCmp<'_> {
    type Ok = ();
    type Error = Mismatch;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Mismatch> {
        self.element(value)
    }

    fn end(self) -> Result<(), Mismatch> {
        self.finish()
    }
}

impl ser::SerializeTuple for SeqCmp<'_> {
    type Ok = ();
    type Error = Mismatch;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Mismatch> {
        self.element(value)
    }

    fn end(self) -> Result<(), Mismatch> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for SeqCmp<'_> {
    type Ok = ();
    type Error = Mismatch;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Mismatch> {
        self.element(value)
    }

    fn end(self) -> Result<(), Mismatch> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for SeqCmp<'_> {
    type Ok = ();
    type Error = Mismatch;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Mismatch> {
        self.element(value)
    }

    fn end(self) -> Result<(), Mismatch> {
        self.finish()
    }
}

/// Compares a map or struct field by field. Every key the item writes must be in the
/// recorded object with an equal value, and the object must have no other keys.
/// (An item writing one key twice would make `to_value` keep the last; serde derives
/// never do that.)
pub struct MapCmp<'a> {
    map: &'a Map<String, Value>,
    rule: Rule<'a>,
    seen: usize,
    key: Option<String>,
}

impl MapCmp<'_> {
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Mismatch> {
        let expected = self.map.get(key).ok_or(Mismatch)?;
        self.seen += 1;
        if let Rule::EnvValues = self.rule {
            // The value itself never reached the trace.
            return check(expected.as_str() == Some(REDACTED));
        }
        value.serialize(Cmp {
            value: expected,
            rule: self.rule.child(key),
        })
    }

    fn finish(self) -> Result<(), Mismatch> {
        check(self.seen == self.map.len())
    }
}

impl ser::SerializeMap for MapCmp<'_> {
    type Ok = ();
    type Error = Mismatch;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Mismatch> {
        // serde_json writes map keys as strings; anything else it refuses too.
        match serde_json::to_value(key) {
            Ok(Value::String(text)) => {
                self.key = Some(text);
                Ok(())
            }
            Ok(Value::Number(number)) => {
                self.key = Some(number.to_string());
                Ok(())
            }
            Ok(Value::Bool(flag)) => {
                self.key = Some(flag.to_string());
                Ok(())
            }
            _ => Err(Mismatch),
        }
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Mismatch> {
        let key = self.key.take().ok_or(Mismatch)?;
        self.field(&key, value)
    }

    fn end(self) -> Result<(), Mismatch> {
        self.finish()
    }
}

impl ser::SerializeStruct for MapCmp<'_> {
    type Ok = ();
    type Error = Mismatch;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Mismatch> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Mismatch> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for MapCmp<'_> {
    type Ok = ();
    type Error = Mismatch;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Mismatch> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Mismatch> {
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::core::{Delay, Effect, TimerKind};
    use crate::protocol::JobRef;

    fn same<T: Serialize>(item: &T) -> bool {
        let value = serde_json::to_value(item).expect("serialisable");
        matches(item, &value, Rule::Plain)
    }

    #[test]
    fn agrees_with_to_value() {
        let job = JobRef {
            job_id: "j".into(),
            attempt: 3,
        };
        assert!(same(&Effect::OpenConnection));
        assert!(same(&Effect::StartTimer {
            timer: TimerKind::JobTimeout(job.clone()),
            delay: Delay::Millis(2),
        }));
        assert!(same(&Effect::StartTimer {
            timer: TimerKind::Ack,
            delay: Delay::Millis(u64::MAX),
        }));
        assert!(same(&(
            -5i32,
            7u8,
            'x',
            1.5f64,
            f64::NAN,
            (),
            Some(1u16),
            None::<u8>
        )));
        let mut map = BTreeMap::new();
        map.insert("a".to_owned(), vec![1, 2]);
        map.insert("b".to_owned(), vec![]);
        assert!(same(&map));
        let mut numeric_keys = BTreeMap::new();
        numeric_keys.insert(4u32, true);
        assert!(same(&numeric_keys));
        assert!(same(&json!({"nested": [{"x": null}, 1, -1, 2.5, "s"]})));
    }

    #[test]
    fn finds_every_kind_of_difference() {
        let effect = Effect::StartTimer {
            timer: TimerKind::Heartbeat,
            delay: Delay::Millis(15_000),
        };
        let good = serde_json::to_value(&effect).expect("serialisable");
        assert!(matches(&effect, &good, Rule::Plain));
        let mut extra = good.clone();
        extra["extra"] = json!(1);
        let mut missing = good.clone();
        missing.as_object_mut().map(|m| m.remove("timer"));
        let mut float = good.clone();
        float["delay"]["millis"] = json!(15_000.0);
        let mut negative = good.clone();
        negative["delay"]["millis"] = json!(-15_000);
        let mut renamed = good.clone();
        renamed["timer"] = json!("ack");
        for wrong in [
            extra,
            missing,
            float,
            negative,
            renamed,
            json!(null),
            json!([]),
        ] {
            assert!(!matches(&effect, &wrong, Rule::Plain), "{wrong}");
        }
        assert!(!matches(&vec![1, 2], &json!([1]), Rule::Plain));
        assert!(!matches(&vec![1], &json!([1, 2]), Rule::Plain));
        assert!(!matches(&-1i64, &json!(u64::MAX), Rule::Plain));
    }
}
