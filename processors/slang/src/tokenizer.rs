//! Words of local-language text, for the index and for queries alike.
//!
//! Tantivy's default tokenizer splits on anything that is not alphanumeric, which cuts Indic
//! words at their combining marks ("क्या" becomes "क" and "या"). Here words come from Unicode word
//! segmentation (UAX #29, ICU4X's `icu_segmenter`), each segment is put in NFC and lower-cased,
//! and segments with no letter or digit (spaces, punctuation, symbols) are dropped: ICU4X's word
//! type is not reliable for Indic scripts, so that test is ours. Nothing is stemmed: Tantivy has no
//! Hindi stemmer, and a stemmer for one language mangles the others in a mixed answer.
//!
//! Invariant: the index and the search API tokenise with the same function ([`words`]), so a word
//! typed in a query is the same term as that word in an answer.

use std::sync::LazyLock;

use icu_normalizer::ComposingNormalizerBorrowed;
use icu_segmenter::WordSegmenter;
use icu_segmenter::options::WordBreakInvariantOptions;
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// Name of [`WordTokenizer`] in the index's tokenizer managers.
pub const WORDS: &str = "slang_words";

/// The segmenter with ICU4X's compiled data: rules for most scripts, and dictionaries or LSTM
/// models for the scripts written without spaces (Thai, Khmer, Lao, Burmese, Chinese, Japanese).
static SEGMENTER: LazyLock<icu_segmenter::WordSegmenterBorrowed<'static>> =
    LazyLock::new(|| WordSegmenter::new_auto(WordBreakInvariantOptions::default()));

/// The words of `text`, in order: (byte offsets in `text`, the word in NFC, lower-cased).
pub fn words(text: &str) -> impl Iterator<Item = (usize, usize, String)> + '_ {
    let nfc = ComposingNormalizerBorrowed::new_nfc();
    let mut breaks = SEGMENTER.segment_str(text);
    let mut start = breaks.next().unwrap_or(0);
    std::iter::from_fn(move || {
        for end in breaks.by_ref() {
            let segment = &text[start..end];
            let from = start;
            start = end;
            // A word has at least one letter or digit; marks alone, spaces, punctuation and
            // symbols are not words.
            if segment.chars().any(char::is_alphanumeric) {
                return Some((from, end, nfc.normalize(segment).to_lowercase()));
            }
        }
        None
    })
}

/// The words of `text` as Tantivy tokens, with their positions and offsets.
fn tokens(text: &str) -> Vec<Token> {
    words(text)
        .enumerate()
        .map(|(position, (from, to, word))| Token {
            offset_from: from,
            offset_to: to,
            position,
            text: word,
            position_length: 1,
        })
        .collect()
}

/// The words of a text as a Tantivy token stream: the indexed field's tokenizer.
#[derive(Debug, Clone, Default)]
pub struct WordTokenizer;

impl Tokenizer for WordTokenizer {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        VecTokenStream::new(tokens(text))
    }
}

/// Tokens computed up front (normalisation makes each word an owned string anyway).
pub struct VecTokenStream {
    tokens: Vec<Token>,
    /// Index of the current token plus one; 0 before the first `advance`.
    next: usize,
    /// Returned by `token` before the first `advance` or after the end, as Tantivy's own streams do.
    empty: Token,
}

impl VecTokenStream {
    fn new(tokens: Vec<Token>) -> Self {
        VecTokenStream {
            tokens,
            next: 0,
            empty: Token::default(),
        }
    }
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        match self.next.checked_sub(1) {
            Some(i) => &self.tokens[i],
            None => &self.empty,
        }
    }

    fn token_mut(&mut self) -> &mut Token {
        match self.next.checked_sub(1) {
            Some(i) => &mut self.tokens[i],
            None => &mut self.empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        words(text).map(|(_, _, w)| w).collect()
    }

    #[test]
    fn indic_words_stay_whole() {
        assert_eq!(texts("क्या है"), ["क्या", "है"]);
        assert_eq!(texts("வணக்கம் சென்னை"), ["வணக்கம்", "சென்னை"]);
        assert_eq!(texts("আমি ভালো আছি"), ["আমি", "ভালো", "আছি"]);
        assert_eq!(texts("کیا حال ہے"), ["کیا", "حال", "ہے"]);
    }

    #[test]
    fn mixed_scripts_split_at_spaces_and_script_changes() {
        assert_eq!(
            texts("Bhai, kya scene hai? एकदम mast!"),
            ["bhai", "kya", "scene", "hai", "एकदम", "mast"]
        );
    }

    #[test]
    fn text_is_put_in_nfc() {
        // "é" as e + combining acute, and Devanagari "क़" as क + nukta: both compose (or stay
        // canonically equal) so that they match what a keyboard types.
        let decomposed = "cafe\u{301}";
        assert_eq!(texts(decomposed), ["café"]);
        assert_eq!(
            texts("\u{915}\u{93c}"),
            texts(&ComposingNormalizerBorrowed::new_nfc().normalize("\u{915}\u{93c}"))
        );
    }

    #[test]
    fn case_is_folded() {
        assert_eq!(texts("MAST Mast mast"), ["mast", "mast", "mast"]);
        assert_eq!(texts("ΣΟΦΙΑ"), texts("σοφια"));
    }

    #[test]
    fn punctuation_spaces_and_symbols_are_dropped() {
        assert_eq!(texts("  ... !!! — ।  ?? 🙂 "), Vec::<String>::new());
        assert_eq!(texts("हाँ।"), ["हाँ"]);
        assert_eq!(texts("12 रुपये"), ["12", "रुपये"]);
    }

    #[test]
    fn offsets_point_into_the_original_text() {
        let text = "ओह, क्या बात";
        for (from, to, word) in words(text) {
            assert_eq!(&text[from..to], word);
        }
    }

    #[test]
    fn the_tantivy_stream_gives_words_with_positions() {
        let mut stream = WordTokenizer.token_stream("क्या बात है");
        let mut seen = Vec::new();
        while let Some(token) = stream.next() {
            seen.push((token.position, token.text.clone()));
        }
        assert_eq!(
            seen,
            [(0, "क्या".into()), (1, "बात".into()), (2, "है".into())]
        );
    }
}
