//! Generic mutations of bytes and text: bit flips, inserts, deletes, copies,
//! dictionary tokens, numbers at their edges, line edits, quoted values and
//! splices with other inputs of the pool. Every target uses them; some add a
//! structure-aware mutator of their own (`protobuf`, `json`).

use crate::rng::Rng;

/// Numbers at the edges of the types and checks parsers use.
pub const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "7",
    "8",
    "63",
    "64",
    "65",
    "100",
    "101",
    "255",
    "256",
    "999",
    "1000",
    "1001",
    "65535",
    "65536",
    "1048576",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "-2147483649",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e15",
    "1e16",
    "1e308",
    "1e309",
    "-0",
    "0.0001",
    "0.5",
    "-0.5",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "0x10",
    "00000000000000000000001",
];

/// Bytes that often end up special: delimiters, quotes, control characters.
const SPECIAL_BYTES: &[u8] = b"\x00\x01\x7f\x80\xff\n\r\t ,;:.-_\"'<>/\\=[]{}()#|0129aAzZ";

/// Applies one to four random edits to `input`, keeping it at most `max_len` bytes.
pub fn havoc(rng: &mut Rng, input: &[u8], pool: &[Vec<u8>], dictionary: &[&str], max_len: usize) -> Vec<u8> {
    let mut data = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        edit(rng, &mut data, pool, dictionary, max_len);
    }
    data.truncate(max_len);
    data
}

fn edit(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>], dictionary: &[&str], max_len: usize) {
    match rng.below(16) {
        0 => flip_bit(rng, data),
        1 => set_special_byte(rng, data),
        2 => insert_random_bytes(rng, data),
        3 => delete_range(rng, data),
        4 => copy_range(rng, data),
        5 | 6 => insert_token(rng, data, dictionary),
        7 => replace_number(rng, data),
        8 => splice(rng, data, pool),
        9 => duplicate_line(rng, data),
        10 => delete_line(rng, data),
        11 => swap_lines(rng, data),
        12 => line_from_pool(rng, data, pool),
        13 => repeat_chunk(rng, data, max_len),
        14 | 15 => replace_quoted(rng, data, dictionary),
        _ => unreachable!("below(16) is under 16"),
    }
}

/// A dictionary token or, one time in three, a number at an edge.
pub fn token<'a>(rng: &mut Rng, dictionary: &[&'a str]) -> &'a str {
    let tokens = if dictionary.is_empty() || rng.chance(1, 3) { NUMBERS } else { dictionary };
    tokens[rng.below(tokens.len())]
}

fn flip_bit(rng: &mut Rng, data: &mut [u8]) {
    if data.is_empty() {
        return;
    }
    let at = rng.below(data.len());
    data[at] ^= 1 << rng.below(8);
}

fn set_special_byte(rng: &mut Rng, data: &mut Vec<u8>) {
    let byte = *rng.pick(SPECIAL_BYTES);
    if data.is_empty() {
        data.push(byte);
        return;
    }
    let at = rng.below(data.len());
    data[at] = byte;
}

fn insert_random_bytes(rng: &mut Rng, data: &mut Vec<u8>) {
    let at = rng.below(data.len() + 1);
    let count = 1 + rng.below(8);
    let bytes: Vec<u8> = (0..count).map(|_| rng.next_u64() as u8).collect();
    data.splice(at..at, bytes);
}

/// A random range of `data` with a mostly short length; None when `data` is empty.
fn range(rng: &mut Rng, data: &[u8]) -> Option<std::ops::Range<usize>> {
    if data.is_empty() {
        return None;
    }
    let start = rng.below(data.len());
    let length = rng.short_length(data.len() - start);
    Some(start..start + length)
}

fn delete_range(rng: &mut Rng, data: &mut Vec<u8>) {
    if let Some(range) = range(rng, data) {
        data.drain(range);
    }
}

fn copy_range(rng: &mut Rng, data: &mut Vec<u8>) {
    if let Some(range) = range(rng, data) {
        let chunk = data[range].to_vec();
        let at = rng.below(data.len() + 1);
        data.splice(at..at, chunk);
    }
}

fn insert_token(rng: &mut Rng, data: &mut Vec<u8>, dictionary: &[&str]) {
    let token = token(rng, dictionary).as_bytes().to_vec();
    let at = rng.below(data.len() + 1);
    if rng.chance(1, 2) || data.is_empty() {
        data.splice(at..at, token);
    } else {
        // Overwrite instead: keeps the length of fixed-width fields roughly right.
        let end = (at + token.len()).min(data.len());
        data.splice(at..end, token);
    }
}

/// Runs of ASCII digits (with a leading minus), where numbers are in text.
fn number_runs(data: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut index = 0;
    while index < data.len() {
        if data[index].is_ascii_digit() {
            let start = if index > 0 && data[index - 1] == b'-' { index - 1 } else { index };
            while index < data.len() && (data[index].is_ascii_digit() || data[index] == b'.') {
                index += 1;
            }
            runs.push(start..index);
        } else {
            index += 1;
        }
    }
    runs
}

fn replace_number(rng: &mut Rng, data: &mut Vec<u8>) {
    let runs = number_runs(data);
    if runs.is_empty() {
        return;
    }
    let run = rng.pick(&runs).clone();
    data.splice(run, rng.pick(NUMBERS).bytes());
}

fn splice(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) {
    if pool.is_empty() {
        return;
    }
    let other = rng.pick(pool);
    let cut = rng.below(data.len() + 1);
    let other_cut = rng.below(other.len() + 1);
    data.truncate(cut);
    data.extend_from_slice(&other[other_cut..]);
}

/// Each line with its newline, as ranges of `data`.
fn lines(data: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (index, byte) in data.iter().enumerate() {
        if *byte == b'\n' {
            lines.push(start..index + 1);
            start = index + 1;
        }
    }
    if start < data.len() {
        lines.push(start..data.len());
    }
    lines
}

fn duplicate_line(rng: &mut Rng, data: &mut Vec<u8>) {
    let lines = lines(data);
    if lines.is_empty() {
        return;
    }
    let line = rng.pick(&lines).clone();
    let copy = data[line.clone()].to_vec();
    let at = rng.pick(&lines).start;
    data.splice(at..at, copy);
}

fn delete_line(rng: &mut Rng, data: &mut Vec<u8>) {
    let lines = lines(data);
    if lines.is_empty() {
        return;
    }
    let line = rng.pick(&lines).clone();
    data.drain(line);
}

fn swap_lines(rng: &mut Rng, data: &mut Vec<u8>) {
    let lines = lines(data);
    if lines.len() < 2 {
        return;
    }
    let mut first = rng.pick(&lines).clone();
    let mut second = rng.pick(&lines).clone();
    if first.start > second.start {
        std::mem::swap(&mut first, &mut second);
    }
    if first == second {
        return;
    }
    let mut swapped = data[..first.start].to_vec();
    swapped.extend_from_slice(&data[second.clone()]);
    swapped.extend_from_slice(&data[first.end..second.start]);
    swapped.extend_from_slice(&data[first]);
    swapped.extend_from_slice(&data[second.end..]);
    *data = swapped;
}

fn line_from_pool(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) {
    if pool.is_empty() {
        return;
    }
    let other = rng.pick(pool);
    let other_lines = lines(other);
    if other_lines.is_empty() {
        return;
    }
    let copy = other[rng.pick(&other_lines).clone()].to_vec();
    let own = lines(data);
    let at = if own.is_empty() { 0 } else { rng.pick(&own).start };
    data.splice(at..at, copy);
}

/// Repeats a chunk many times: finds work that grows faster than the input.
fn repeat_chunk(rng: &mut Rng, data: &mut Vec<u8>, max_len: usize) {
    let Some(range) = range(rng, data) else { return };
    let chunk = data[range.clone()].to_vec();
    let room = max_len.saturating_sub(data.len()) / chunk.len().max(1);
    let times = (2 + rng.below(1000)).min(room);
    let repeated: Vec<u8> = chunk.iter().copied().cycle().take(chunk.len() * times).collect();
    data.splice(range.end..range.end, repeated);
}

/// Replaces what is between a pair of double quotes: XML attribute values, JSON
/// and TOML strings.
fn replace_quoted(rng: &mut Rng, data: &mut Vec<u8>, dictionary: &[&str]) {
    let quotes: Vec<usize> = data.iter().enumerate().filter(|(_, byte)| **byte == b'"').map(|(at, _)| at).collect();
    if quotes.len() < 2 {
        return;
    }
    let pair = rng.below(quotes.len() / 2) * 2;
    let (open, close) = (quotes[pair], quotes[pair + 1]);
    let replacement = token(rng, dictionary).as_bytes().to_vec();
    data.splice(open + 1..close, replacement);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_length_and_replay_from_the_seed() {
        let input = b"sn,cpu_milli\nn0,64000\nn1,96000\n".to_vec();
        let pool = vec![input.clone(), b"name=\"x\"\n".to_vec()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..500).map(|_| havoc(&mut rng, &input, &pool, &["gpu"], 64)).collect::<Vec<_>>()
        };
        let first = run(3);
        assert!(first.iter().all(|child| child.len() <= 64));
        assert!(first.iter().any(|child| child != &input));
        assert_eq!(first, run(3));
    }

    #[test]
    fn swapping_lines_keeps_every_byte() {
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            let mut data = b"a\nbb\nccc\n".to_vec();
            swap_lines(&mut rng, &mut data);
            let mut sorted = data.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, b"\n\n\nabbccc".to_vec());
        }
    }
}
