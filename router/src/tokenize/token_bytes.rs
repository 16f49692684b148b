//! The raw bytes behind each vocabulary entry (OpenAI logprobs `bytes`).

use std::collections::HashMap;

use super::from_vocab::VocabKind;
use super::gguf_vocab::{
    TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED,
};

/// Bytes of every token, indexed by id.
/// `types` are GGUF token types; control, unknown and user-defined tokens are their text.
pub fn all_token_bytes(tokens: &[String], types: &[i32], kind: VocabKind) -> Vec<Vec<u8>> {
    let byte_of_char = byte_level_decode_map();
    tokens
        .iter()
        .zip(types)
        .map(|(token, ty)| match *ty {
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN => {
                token.as_bytes().to_vec()
            }
            _ => match kind {
                VocabKind::ByteLevel => byte_level_bytes(token, &byte_of_char),
                VocabKind::SentencePiece => sentencepiece_bytes(token, *ty),
            },
        })
        .collect()
}

/// GPT-2's `bytes_to_unicode` table: printable bytes map to themselves, the rest to
/// U+0100 onwards in byte order.
pub fn byte_level_encode_table() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in (0u32..).zip(table.iter_mut()) {
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

fn byte_level_decode_map() -> HashMap<char, u8> {
    (0u8..=255)
        .zip(byte_level_encode_table())
        .map(|(b, c)| (c, b))
        .collect()
}

/// A char outside the table (a malformed vocabulary) keeps its own UTF-8 bytes.
fn byte_level_bytes(token: &str, byte_of_char: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match byte_of_char.get(&c) {
            Some(b) => out.push(*b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

fn sentencepiece_bytes(token: &str, ty: i32) -> Vec<u8> {
    if ty == TOKEN_TYPE_BYTE
        && let Some(byte) = parse_byte_token(token)
    {
        return vec![byte];
    }
    token.replace('\u{2581}', " ").into_bytes()
}

/// `<0x0A>` -> 0x0A.
pub fn parse_byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_matches_gpt2() {
        let table = byte_level_encode_table();
        assert_eq!(table[b' ' as usize], '\u{0120}'); // "Ġ"
        assert_eq!(table[b'\n' as usize], '\u{010A}'); // "Ċ"
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[0xAD], '\u{0143}');
        assert_eq!(table[0xFF], '\u{00FF}');
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn parses_byte_tokens() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(0x0A));
        assert_eq!(parse_byte_token("<0xE2>"), Some(0xE2));
        assert_eq!(parse_byte_token("<0xE>"), None);
        assert_eq!(parse_byte_token("hello"), None);
    }
}
