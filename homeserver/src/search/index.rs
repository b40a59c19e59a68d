//! The tantivy index: its schema, and the one place its directory is opened.
//!
//! One document per indexed event: the text fields (`body` with `formatted_body` as text,
//! `name`, `topic`) are indexed but never stored — results are read back from the event log,
//! through the store, so the index holds no copy of message text beyond its term dictionary.

use std::path::Path;

use tantivy::{
    Index, IndexReader, IndexWriter, ReloadPolicy,
    schema::{
        FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
    },
};

use super::{
    encrypted_dir::EncryptedDirectory,
    tokenizer::{ANALYZER, analyzer},
};
use crate::{at_rest::Key, config::Config};

/// Memory the index writer may buffer before it flushes a segment.
const WRITER_MEMORY: usize = 50_000_000;

#[derive(Clone, Copy)]
pub struct Fields {
    pub event_id: Field,
    pub room_id: Field,
    pub sender: Field,
    pub event_type: Field,
    pub thread: Field,
    pub ts: Field,
    pub stream: Field,
    pub body: Field,
    pub name: Field,
    pub topic: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        event_id: b.add_text_field("event_id", STRING | STORED),
        room_id: b.add_text_field("room_id", STRING | STORED),
        sender: b.add_text_field("sender", STRING | STORED),
        event_type: b.add_text_field("type", STRING),
        thread: b.add_text_field("thread", STRING | STORED),
        ts: b.add_i64_field("ts", INDEXED | STORED | FAST),
        stream: b.add_i64_field("stream", INDEXED | STORED | FAST),
        body: b.add_text_field("body", text.clone()),
        name: b.add_text_field("name", text.clone()),
        topic: b.add_text_field("topic", text),
    };
    (b.build(), fields)
}

/// The index's storage: every file sealed under the index's data key (spec/at-rest.md), so a
/// copy of the directory reveals no indexed word.
pub fn open_directory(path: &Path, key: &Key) -> anyhow::Result<Box<dyn tantivy::Directory>> {
    let directory = EncryptedDirectory::open(path, key)
        .map_err(|e| anyhow::anyhow!("cannot create the search index directory {}: {e}", path.display()))?;
    Ok(Box::new(directory))
}

/// An open index with its single writer and a reader reloaded by the indexer after each commit.
pub struct SearchIndex {
    pub index: Index,
    pub reader: IndexReader,
    pub writer: std::sync::Mutex<IndexWriter>,
    pub fields: Fields,
}

impl SearchIndex {
    pub fn open(config: &Config, key: &Key) -> anyhow::Result<Self> {
        let path = config.search_index_path();
        let (schema, fields) = schema();
        let index = Index::open_or_create(open_directory(&path, key)?, schema)
            .map_err(|e| anyhow::anyhow!("cannot open the search index {}: {e}", path.display()))?;
        index.tokenizers().register(ANALYZER, analyzer());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        Ok(Self {
            index,
            reader,
            writer: std::sync::Mutex::new(writer),
            fields,
        })
    }

    /// The ID this index was committed with (its last commit's payload), if any.
    pub fn committed_id(&self) -> Option<String> {
        self.index.load_metas().ok().and_then(|m| m.payload)
    }
}
