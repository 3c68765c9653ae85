//! A structure-aware mutator for JSON: one value somewhere in the document is
//! replaced, removed, repeated or added, so the input still parses and the
//! mutation reaches what is done with the document.

use serde_json::{Map, Value};

use crate::mutate::{self, NUMBERS};
use crate::rng::Rng;

/// Mutates one value of the document; None when `input` is not JSON.
pub fn mutate(rng: &mut Rng, input: &[u8], dictionary: &[&str]) -> Option<Vec<u8>> {
    let mut document: Value = serde_json::from_slice(input).ok()?;
    let count = count(&document);
    let mut index = rng.below(count);
    let target = nth_mut(&mut document, &mut index)?;
    change(rng, target, dictionary);
    serde_json::to_vec(&document).ok()
}

fn count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count).sum(),
        Value::Object(map) => map.values().map(count).sum(),
        _ => 0,
    }
}

/// The value at `index` in pre-order.
fn nth_mut<'a>(value: &'a mut Value, index: &mut usize) -> Option<&'a mut Value> {
    if *index == 0 {
        return Some(value);
    }
    *index -= 1;
    match value {
        Value::Array(items) => items.iter_mut().find_map(|item| nth_mut(item, index)),
        Value::Object(map) => map.values_mut().find_map(|item| nth_mut(item, index)),
        _ => None,
    }
}

fn scalar(rng: &mut Rng, dictionary: &[&str]) -> Value {
    match rng.below(6) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => number(rng),
        3 => Value::String(rng.pick(NUMBERS).to_string()),
        _ => Value::String(mutate::token(rng, dictionary).to_owned()),
    }
}

fn number(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => Value::from(rng.next_u64()),
        1 => Value::from(-((rng.next_u64() >> 1) as i64)),
        2 => Value::from(*rng.pick(&[0u64, 1, 2, 10, 100, 1000, u64::from(u32::MAX), u64::MAX])),
        _ => Value::from(*rng.pick(&[-1.0f64, 0.5, 1e300, -1e300, 4294967296.5])),
    }
}

fn change(rng: &mut Rng, value: &mut Value, dictionary: &[&str]) {
    match (rng.below(6), &mut *value) {
        (0, Value::Object(map)) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            map.remove(rng.pick(&keys));
        }
        (0, Value::Array(items)) if !items.is_empty() => {
            items.remove(rng.below(items.len()));
        }
        (1, Value::Object(map)) => {
            let key = mutate::token(rng, dictionary).to_owned();
            map.insert(key, scalar(rng, dictionary));
        }
        (1 | 2, Value::Array(items)) if !items.is_empty() => {
            // Repeat an element, sometimes many times (long node lists).
            let copy = items[rng.below(items.len())].clone();
            let times = if rng.chance(1, 4) { 1 + rng.below(500) } else { 1 };
            items.extend(std::iter::repeat_n(copy, times));
        }
        (2 | 3, Value::String(text)) => {
            let bytes = mutate::havoc(rng, text.as_bytes(), &[], dictionary, text.len() + 64);
            *text = String::from_utf8_lossy(&bytes).into_owned();
        }
        (4, Value::Object(map)) if !map.is_empty() => {
            // Move a value under another key of the same object: right shape, wrong place.
            let keys: Vec<String> = map.keys().cloned().collect();
            let (from, to) = (rng.pick(&keys).clone(), rng.pick(&keys).clone());
            if let Some(moved) = map.get(&from).cloned() {
                map.insert(to, moved);
            }
        }
        (5, _) => *value = if rng.chance(1, 2) { Value::Object(Map::new()) } else { Value::Array(Vec::new()) },
        _ => *value = scalar(rng, dictionary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_keep_a_document_a_document() {
        let input = br#"{"Pod":{"metadata":{"name":"p","annotations":{"a":"b"}}},"NodeNames":["n1","n2"]}"#;
        let mut rng = Rng::new(9);
        let mut changed = 0;
        for _ in 0..200 {
            let child = mutate(&mut rng, input, &["allot.io/gpu"]).expect("JSON");
            assert!(serde_json::from_slice::<Value>(&child).is_ok());
            changed += usize::from(child != input);
        }
        assert!(changed > 150, "{changed}");
        assert_eq!(mutate(&mut rng, b"{", &[]), None);
    }
}
