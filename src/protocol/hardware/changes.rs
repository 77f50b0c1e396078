//! Field-level differences between two JSON documents, and applying them.
//!
//! The runner sends the control plane a [`HardwareChanges`] list instead of a
//! whole report when the hardware changes; the control plane applies it to
//! its stored record with [`apply_changes`].

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// One changed field. `path` is dotted, arrays by index
/// (`gpus.devices.0.name`); an empty path is the whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldChange {
    pub path: String,
    /// Absent (not `null`) when the field did not exist before, e.g. a GPU
    /// that appeared. `null` is a real value: an `Option` field that was
    /// `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub old: Option<Value>,
    /// Absent when the field no longer exists, e.g. a GPU that disappeared.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub new: Option<Value>,
}

/// Keeps `"old": null` distinct from a missing `old` key: serde would
/// otherwise read both as `None`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The changes between two reports; serializes as a plain JSON array of
/// [`FieldChange`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HardwareChanges(pub Vec<FieldChange>);

impl HardwareChanges {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, FieldChange> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a HardwareChanges {
    type Item = &'a FieldChange;
    type IntoIter = std::slice::Iter<'a, FieldChange>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Every leaf that differs between `old` and `new`. Objects are compared key
/// by key, arrays index by index; where the two sides have different JSON
/// types the whole value is one change.
pub fn diff_values(old: &Value, new: &Value) -> HardwareChanges {
    let mut changes = Vec::new();
    diff_at("", old, new, &mut changes);
    HardwareChanges(changes)
}

fn diff_at(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Value::Object(old_map), Value::Object(new_map)) => {
            for (key, old_value) in old_map {
                let child = join(path, key);
                match new_map.get(key) {
                    Some(new_value) => diff_at(&child, old_value, new_value, out),
                    None => out.push(change(child, Some(old_value), None)),
                }
            }
            for (key, new_value) in new_map {
                if !old_map.contains_key(key) {
                    out.push(change(join(path, key), None, Some(new_value)));
                }
            }
        }
        (Value::Array(old_items), Value::Array(new_items)) => {
            for (index, (old_item, new_item)) in old_items.iter().zip(new_items).enumerate() {
                diff_at(&join(path, &index.to_string()), old_item, new_item, out);
            }
            // Removals from the end first, so applying the list in order
            // never shifts an index that a later entry names.
            for index in (new_items.len()..old_items.len()).rev() {
                out.push(change(
                    join(path, &index.to_string()),
                    old_items.get(index),
                    None,
                ));
            }
            for index in old_items.len()..new_items.len() {
                out.push(change(
                    join(path, &index.to_string()),
                    None,
                    new_items.get(index),
                ));
            }
        }
        _ if old != new => out.push(change(path.to_owned(), Some(old), Some(new))),
        _ => {}
    }
}

fn join(path: &str, segment: &str) -> String {
    if path.is_empty() {
        segment.to_owned()
    } else {
        format!("{path}.{segment}")
    }
}

fn change(path: String, old: Option<&Value>, new: Option<&Value>) -> FieldChange {
    FieldChange {
        path,
        old: old.cloned(),
        new: new.cloned(),
    }
}

/// A change list that does not fit the document it is applied to. The
/// control plane should then ask the runner for a full report.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ApplyError {
    #[error("change to {path:?}: the stored value is {found}, but the change expects {expected}")]
    Conflict {
        path: String,
        expected: String,
        found: String,
    },
    #[error("change to {path:?}: no object or array at {parent:?}")]
    MissingParent { path: String, parent: String },
    #[error("change to {path:?}: {segment:?} is not an index into an array of {len}")]
    BadIndex {
        path: String,
        segment: String,
        len: usize,
    },
    #[error("change to {path:?}: the whole document cannot be removed")]
    RemoveRoot { path: String },
}

/// Applies `changes` to a copy of `base`. Each change's `old` value must
/// match what `base` holds at that path (absent where `old` is absent), so a
/// change list made against a different record is refused rather than
/// merged into a mix of both.
pub fn apply_changes(base: &Value, changes: &HardwareChanges) -> Result<Value, ApplyError> {
    let mut document = base.clone();
    for change in changes {
        apply_one(&mut document, change)?;
    }
    Ok(document)
}

fn apply_one(document: &mut Value, change: &FieldChange) -> Result<(), ApplyError> {
    let path = change.path.as_str();
    if path.is_empty() {
        check_old(path, Some(&*document), change)?;
        *document = change.new.clone().ok_or_else(|| ApplyError::RemoveRoot {
            path: path.to_owned(),
        })?;
        return Ok(());
    }
    let (parent_path, last) = path.rsplit_once('.').unwrap_or(("", path));
    let parent = resolve_mut(document, parent_path).ok_or_else(|| ApplyError::MissingParent {
        path: path.to_owned(),
        parent: parent_path.to_owned(),
    })?;
    match parent {
        Value::Object(map) => {
            check_old(path, map.get(last), change)?;
            match &change.new {
                Some(value) => map.insert(last.to_owned(), value.clone()),
                None => map.remove(last),
            };
            Ok(())
        }
        Value::Array(items) => apply_to_array(items, last, path, change),
        _ => Err(ApplyError::MissingParent {
            path: path.to_owned(),
            parent: parent_path.to_owned(),
        }),
    }
}

fn apply_to_array(
    items: &mut Vec<Value>,
    segment: &str,
    path: &str,
    change: &FieldChange,
) -> Result<(), ApplyError> {
    let len = items.len();
    let bad_index = || ApplyError::BadIndex {
        path: path.to_owned(),
        segment: segment.to_owned(),
        len,
    };
    let index: usize = segment.parse().map_err(|_| bad_index())?;
    check_old(path, items.get(index), change)?;
    match &change.new {
        Some(value) if index < len => items[index] = value.clone(),
        Some(value) if index == len => items.push(value.clone()),
        None if index < len => {
            items.remove(index);
        }
        _ => return Err(bad_index()),
    }
    Ok(())
}

fn check_old(path: &str, found: Option<&Value>, change: &FieldChange) -> Result<(), ApplyError> {
    if found == change.old.as_ref() {
        return Ok(());
    }
    Err(ApplyError::Conflict {
        path: path.to_owned(),
        expected: describe(change.old.as_ref()),
        found: describe(found),
    })
}

fn describe(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".to_owned(), Value::to_string)
}

fn resolve_mut<'a>(document: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    if path.is_empty() {
        return Some(document);
    }
    path.split('.')
        .try_fold(document, |value, segment| match value {
            Value::Object(map) => map.get_mut(segment),
            Value::Array(items) => items.get_mut(segment.parse::<usize>().ok()?),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(old: Value, new: Value) -> HardwareChanges {
        let changes = diff_values(&old, &new);
        assert_eq!(apply_changes(&old, &changes).unwrap(), new);
        changes
    }

    #[test]
    fn identical_documents_have_no_changes() {
        let doc = json!({"a": [1, {"b": null}]});
        assert!(diff_values(&doc, &doc).is_empty());
    }

    #[test]
    fn leaf_change_has_a_dotted_path() {
        let changes = round_trip(
            json!({"cpu": {"model": "a"}}),
            json!({"cpu": {"model": "b"}}),
        );
        assert_eq!(
            serde_json::to_value(&changes).unwrap(),
            json!([{"path": "cpu.model", "old": "a", "new": "b"}])
        );
    }

    #[test]
    fn arrays_grow_and_shrink() {
        round_trip(json!({"d": [1, 2, 3, 4]}), json!({"d": [1, 9]}));
        round_trip(json!({"d": []}), json!({"d": [{"x": 1}, {"x": 2}]}));
    }

    #[test]
    fn keys_appear_and_disappear_and_types_change() {
        round_trip(
            json!({"g": {"kind": "none"}}),
            json!({"g": {"kind": "nvidia", "devices": [1]}}),
        );
        round_trip(json!({"g": {"kind": "nvidia", "v": "1"}}), json!({"g": 5}));
        round_trip(json!(1), json!("whole document"));
    }

    #[test]
    fn null_old_value_is_not_the_same_as_absent() {
        let changes = diff_values(&json!({"c": null}), &json!({"c": "13.0"}));
        let text = serde_json::to_string(&changes).unwrap();
        assert_eq!(text, r#"[{"path":"c","old":null,"new":"13.0"}]"#);
        let parsed: HardwareChanges = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, changes);

        let added = diff_values(&json!({}), &json!({"c": "13.0"}));
        let text = serde_json::to_string(&added).unwrap();
        assert_eq!(text, r#"[{"path":"c","new":"13.0"}]"#);
        assert_eq!(
            serde_json::from_str::<HardwareChanges>(&text).unwrap(),
            added
        );
    }

    #[test]
    fn stale_base_is_a_conflict() {
        let changes = diff_values(&json!({"a": 1}), &json!({"a": 2}));
        let error = apply_changes(&json!({"a": 7}), &changes).unwrap_err();
        assert_eq!(
            error,
            ApplyError::Conflict {
                path: "a".into(),
                expected: "1".into(),
                found: "7".into()
            }
        );
    }

    #[test]
    fn index_past_the_end_is_refused() {
        let changes = diff_values(&json!({"d": [1]}), &json!({"d": [1, 2, 3]}));
        let skipping = HardwareChanges(vec![changes.0[1].clone()]);
        assert!(matches!(
            apply_changes(&json!({"d": [1]}), &skipping),
            Err(ApplyError::BadIndex { .. })
        ));
    }
}
