//! The analyzer of indexed text and of search terms: words of alphabetic scripts, lower-cased
//! and stemmed (English); runs of Chinese, Japanese and Korean characters, which have no spaces
//! between words, as overlapping character bigrams, so any two adjacent characters of a CJK
//! text are findable (a lone CJK character is its own token).

use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, Stemmer, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The name the analyzer is registered under in the index.
pub const ANALYZER: &str = "hearth";

/// Words longer than this (in bytes) are not indexed: nobody searches for them, and they would
/// bloat the term dictionary.
const MAX_TOKEN_BYTES: usize = 64;

pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(WordsAndBigrams)
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build()
}

/// The text's tokens as the index sees them (for building queries and highlights).
pub fn tokens(text: &str) -> Vec<String> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// Whether a character belongs to a script written without spaces between words.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x1100..=0x11FF    // Hangul Jamo
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x2FA1F) // Extensions B–F, compatibility supplement
}

#[derive(Clone, Default)]
pub struct WordsAndBigrams;

pub struct VecTokenStream {
    tokens: Vec<Token>,
    at: usize,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        self.at += 1;
        self.at <= self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.at - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.at - 1]
    }
}

impl Tokenizer for WordsAndBigrams {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        let mut tokens = Vec::new();
        let push = |from: usize, to: usize, tokens: &mut Vec<Token>| {
            let position = tokens.len();
            tokens.push(Token {
                offset_from: from,
                offset_to: to,
                position,
                text: text[from..to].to_owned(),
                position_length: 1,
            });
        };
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let end_of = |i: usize| chars.get(i + 1).map_or(text.len(), |(at, _)| *at);
        let mut i = 0;
        while i < chars.len() {
            let (start, c) = chars[i];
            if is_cjk(c) {
                let mut j = i;
                while j + 1 < chars.len() && is_cjk(chars[j + 1].1) {
                    j += 1;
                }
                if j == i {
                    push(start, end_of(i), &mut tokens);
                } else {
                    for (k, (at, _)) in chars.iter().enumerate().take(j).skip(i) {
                        push(*at, end_of(k + 1), &mut tokens);
                    }
                }
                i = j + 1;
            } else if c.is_alphanumeric() {
                let mut j = i;
                while j + 1 < chars.len() && chars[j + 1].1.is_alphanumeric() && !is_cjk(chars[j + 1].1) {
                    j += 1;
                }
                push(start, end_of(j), &mut tokens);
                i = j + 1;
            } else {
                i += 1;
            }
        }
        VecTokenStream { tokens, at: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_stemmed_and_cjk_is_split_into_bigrams() {
        assert_eq!(tokens("Running QUICKLY, runners!"), ["run", "quick", "runner"]);
        assert_eq!(tokens("会议室在哪里"), ["会议", "议室", "室在", "在哪", "哪里"]);
        assert_eq!(tokens("東京 trip"), ["東京", "trip"]);
        assert_eq!(tokens("猫"), ["猫"]);
        assert_eq!(tokens("회의실abc"), ["회의", "의실", "abc"]);
        assert!(tokens(" ,.;!").is_empty());
    }
}
