//! A structure-aware mutator for protobuf messages that needs no schema: the
//! message is read as its wire fields (nested messages recognised by trying to
//! read them), one field somewhere in the tree is changed, deleted, repeated or
//! added, and the message is written back. Byte-level mutation rarely gets past
//! the decoder; this reaches the validation behind it.

use crate::mutate::{self, NUMBERS};
use crate::rng::Rng;

/// One field as it is on the wire.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Varint(u64),
    Fixed64(u64),
    Bytes(Vec<u8>),
    Fixed32(u32),
}

#[derive(Debug, Clone, PartialEq)]
struct Field {
    number: u32,
    value: Value,
}

/// Varints at the edges of the integer types and of the checks behind them.
const VARINTS: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    9,
    16,
    32,
    63,
    64,
    65,
    100,
    101,
    127,
    128,
    255,
    256,
    999,
    1000,
    1001,
    4096,
    65535,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    u64::MAX / 1000 + 1,
    u64::MAX - 1,
    u64::MAX,
    1 << 63,
];

/// Grows a message by at most this many bytes per duplication, so one mutation
/// cannot make an input the size of the machine's memory.
const MAX_GROWTH: usize = 64 * 1024;

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The fields of a message, or None when the bytes are not one.
fn parse(bytes: &[u8]) -> Option<Vec<Field>> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let number = u32::try_from(key >> 3).ok().filter(|number| (1..1 << 29).contains(number))?;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(bytes, &mut at)?),
            1 => {
                let chunk = bytes.get(at..at + 8)?;
                at += 8;
                Value::Fixed64(u64::from_le_bytes(chunk.try_into().ok()?))
            }
            2 => {
                let length = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                let chunk = bytes.get(at..at.checked_add(length)?)?;
                at += length;
                Value::Bytes(chunk.to_vec())
            }
            5 => {
                let chunk = bytes.get(at..at + 4)?;
                at += 4;
                Value::Fixed32(u32::from_le_bytes(chunk.try_into().ok()?))
            }
            _ => return None,
        };
        fields.push(Field { number, value });
    }
    Some(fields)
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        let wire_type = match field.value {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        };
        write_varint(&mut out, u64::from(field.number) << 3 | wire_type);
        match &field.value {
            Value::Varint(value) => write_varint(&mut out, *value),
            Value::Fixed64(value) => out.extend_from_slice(&value.to_le_bytes()),
            Value::Bytes(bytes) => {
                write_varint(&mut out, bytes.len() as u64);
                out.extend_from_slice(bytes);
            }
            Value::Fixed32(value) => out.extend_from_slice(&value.to_le_bytes()),
        }
    }
    out
}

/// Strings (bus ids, cpu lists, names) are printable; nested messages start with a
/// field key, which is not. Treating a string as a message would only garble it.
fn is_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| !text.chars().any(char::is_control))
}

/// The nested message in a field, when it holds one.
fn nested(value: &Value) -> Option<Vec<Field>> {
    match value {
        Value::Bytes(bytes) if !bytes.is_empty() && !is_text(bytes) => parse(bytes).filter(|fields| !fields.is_empty()),
        _ => None,
    }
}

/// Mutates one field somewhere in the message; None when `input` is no message.
pub fn mutate(rng: &mut Rng, input: &[u8], dictionary: &[&str]) -> Option<Vec<u8>> {
    let mut fields = parse(input)?;
    mutate_message(rng, &mut fields, dictionary, 0);
    Some(encode(&fields))
}

fn mutate_message(rng: &mut Rng, fields: &mut Vec<Field>, dictionary: &[&str], depth: usize) {
    // Go down into a nested message most of the time: the interesting fields of
    // an inventory are three or four levels deep.
    if !fields.is_empty() && depth < 8 && rng.chance(3, 4) {
        let index = pick_field(rng, fields);
        if let Some(mut inner) = nested(&fields[index].value) {
            mutate_message(rng, &mut inner, dictionary, depth + 1);
            fields[index].value = Value::Bytes(encode(&inner));
            return;
        }
    }
    if fields.is_empty() {
        fields.push(new_field(rng, 1, dictionary));
        return;
    }
    let index = pick_field(rng, fields);
    match rng.below(8) {
        0..=2 => change_value(rng, &mut fields[index].value, dictionary),
        3 => {
            fields.remove(index);
        }
        4 => {
            let copy = fields[index].clone();
            fields.insert(index + 1, copy);
        }
        5 => {
            // Many copies: long repeated lists (GPUs, PCI nodes, devices).
            let copy = fields[index].clone();
            let size = encode(std::slice::from_ref(&copy)).len().max(1);
            let times = (1 + rng.below(200)).min(MAX_GROWTH / size);
            for _ in 0..times {
                fields.insert(index + 1, copy.clone());
            }
        }
        6 => {
            let numbers: Vec<u32> = fields.iter().map(|field| field.number).collect();
            let number = rng.pick(&numbers).saturating_add(rng.below(3) as u32).max(1);
            let field = new_field(rng, number, dictionary);
            fields.insert(rng.below(fields.len() + 1), field);
        }
        7 => {
            let other = rng.below(fields.len());
            fields.swap(index, other);
        }
        _ => unreachable!("below(8) is under 8"),
    }
}

/// A field, chosen by number first: a message with 139 PCI nodes and 8 GPUs
/// gets its GPUs mutated as often as its PCI nodes.
fn pick_field(rng: &mut Rng, fields: &[Field]) -> usize {
    let mut numbers: Vec<u32> = fields.iter().map(|field| field.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    let number = *rng.pick(&numbers);
    let positions: Vec<usize> =
        fields.iter().enumerate().filter(|(_, field)| field.number == number).map(|(at, _)| at).collect();
    *rng.pick(&positions)
}

fn new_field(rng: &mut Rng, number: u32, dictionary: &[&str]) -> Field {
    let value = if rng.chance(1, 2) {
        Value::Varint(*rng.pick(VARINTS))
    } else {
        Value::Bytes(mutate::token(rng, dictionary).as_bytes().to_vec())
    };
    Field { number, value }
}

fn change_value(rng: &mut Rng, value: &mut Value, dictionary: &[&str]) {
    match value {
        Value::Varint(number) => {
            *number = match rng.below(4) {
                0 => number.wrapping_add(1),
                1 => number.wrapping_sub(1),
                2 => rng.next_u64() >> rng.below(64),
                _ => *rng.pick(VARINTS),
            }
        }
        Value::Fixed64(number) => *number = rng.next_u64(),
        Value::Fixed32(number) => *number = rng.next_u64() as u32,
        Value::Bytes(bytes) => {
            *bytes = match rng.below(5) {
                0 => mutate::token(rng, dictionary).as_bytes().to_vec(),
                1 => Vec::new(),
                2 => {
                    // A number where one is expected, in text (cpu lists, counts).
                    rng.pick(NUMBERS).as_bytes().to_vec()
                }
                3 => {
                    // A list of many items (cpu lists, model lists): work per item.
                    let item = if rng.chance(1, 2) { mutate::token(rng, dictionary).as_bytes() } else { &bytes[..] };
                    let times = 2 + rng.below(MAX_GROWTH / (item.len() + 1)).min(4000);
                    item.iter().copied().chain([b',']).cycle().take((item.len() + 1) * times - 1).collect()
                }
                _ => mutate::havoc(rng, bytes, &[], dictionary, bytes.len() + 64),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_and_write_back_the_same_bytes() {
        // field 1: "node-a"; field 2: message { field 1: varint 150 }; field 3: fixed32.
        let bytes = [0x0a, 6, b'n', b'o', b'd', b'e', b'-', b'a', 0x12, 3, 0x08, 0x96, 0x01, 0x1d, 1, 2, 3, 4];
        let fields = parse(&bytes).expect("a message");
        assert_eq!(fields.len(), 3);
        assert_eq!(nested(&fields[1].value), Some(vec![Field { number: 1, value: Value::Varint(150) }]));
        assert_eq!(nested(&fields[0].value), None, "a string is not a message");
        assert_eq!(encode(&fields), bytes.to_vec());
        assert_eq!(parse(&[0x0a, 9, 1]), None, "a length past the end");
    }

    #[test]
    fn mutations_keep_a_message_a_message() {
        let bytes = [0x0a, 6, b'n', b'o', b'd', b'e', b'-', b'a', 0x12, 3, 0x08, 0x96, 0x01];
        let mut rng = Rng::new(5);
        let mut changed = 0;
        for _ in 0..200 {
            let child = mutate(&mut rng, &bytes, &["0-3"]).expect("a message");
            assert!(parse(&child).is_some());
            changed += usize::from(child != bytes);
        }
        assert!(changed > 150, "{changed}");
    }
}
