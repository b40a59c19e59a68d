//! What encrypting the search index costs: the same tantivy index (message-like documents)
//! built and queried on `MmapDirectory` and on `EncryptedDirectory`.
//!
//! `cargo bench -p hearth --bench encrypted_index [-- DOCS]` (default 200,000 documents).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use hearth::{at_rest::Key, search::encrypted_dir::EncryptedDirectory};
use tantivy::{
    Directory, Index, IndexSettings,
    collector::TopDocs,
    directory::MmapDirectory,
    doc,
    query::QueryParser,
    schema::{FAST, STORED, STRING, Schema, TEXT},
};

const WORDS: &[&str] = &[
    "meeting", "budget", "release", "deploy", "customer", "invoice", "quarter", "roadmap", "design",
    "review", "coffee", "lunch", "server", "database", "index", "search", "matrix", "room", "thread",
    "holiday", "report", "contract", "security", "backup", "incident", "launch", "hiring", "travel",
];

fn message(i: u64) -> String {
    let mut x = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut words = Vec::with_capacity(12);
    for _ in 0..12 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        words.push(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    format!("{} #{i}", words.join(" "))
}

struct Outcome {
    index: Duration,
    query_p50: Duration,
    query_p95: Duration,
    bytes: u64,
}

fn run(dir: Box<dyn Directory>, docs: u64) -> Outcome {
    let mut builder = Schema::builder();
    let body = builder.add_text_field("body", TEXT | STORED);
    let room = builder.add_text_field("room_id", STRING | STORED);
    let ts = builder.add_i64_field("ts", FAST | STORED);
    let index = Index::create(dir, builder.build(), IndexSettings::default()).expect("create index");
    let started = Instant::now();
    let mut writer = index.writer_with_num_threads(1, 100_000_000).expect("writer");
    for i in 0..docs {
        writer
            .add_document(doc!(body => message(i), room => format!("!r{}:bench", i % 100), ts => i as i64))
            .expect("add");
        if i % 50_000 == 49_999 {
            writer.commit().expect("commit");
        }
    }
    writer.commit().expect("commit");
    writer.wait_merging_threads().expect("merges");
    let index_time = started.elapsed();

    let reader = index.reader().expect("reader");
    let searcher = reader.searcher();
    let parser = QueryParser::for_index(&index, vec![body]);
    let mut times = Vec::new();
    for round in 0..400 {
        let query = format!(
            "{} {}",
            WORDS[round % WORDS.len()],
            WORDS[(round * 7 + 3) % WORDS.len()]
        );
        let query = parser.parse_query(&query).expect("query");
        let started = Instant::now();
        let hits = searcher
            .search(&query, &TopDocs::with_limit(10).order_by_score())
            .expect("search");
        for (_, address) in hits {
            let _: tantivy::TantivyDocument = searcher.doc(address).expect("doc");
        }
        times.push(started.elapsed());
    }
    times.sort();
    Outcome {
        index: index_time,
        query_p50: times[times.len() / 2],
        query_p95: times[times.len() * 95 / 100],
        bytes: 0,
    }
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let docs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let plain_dir = tempfile::tempdir().expect("tempdir");
    let sealed_dir = tempfile::tempdir().expect("tempdir");
    let mut plain = run(
        Box::new(MmapDirectory::open(plain_dir.path()).expect("mmap")),
        docs,
    );
    plain.bytes = dir_size(plain_dir.path());
    let dir = EncryptedDirectory::open(sealed_dir.path(), &Key::generate()).expect("encrypted dir");
    let mut sealed = run(Box::new(dir), docs);
    sealed.bytes = dir_size(sealed_dir.path());
    println!("{docs} documents, 12 words each; 400 two-word ranked queries (top 10, stored fields fetched)");
    println!("| directory | index + commit | query P50 | query P95 | size |");
    println!("|---|---|---|---|---|");
    for (name, o) in [("MmapDirectory", &plain), ("EncryptedDirectory", &sealed)] {
        println!(
            "| {name} | {:.2?} | {:.2?} | {:.2?} | {:.1} MiB |",
            o.index,
            o.query_p50,
            o.query_p95,
            o.bytes as f64 / 1048576.0
        );
    }
    println!(
        "encrypted/plain: indexing {:.2}x, query P50 {:.2}x, P95 {:.2}x",
        sealed.index.as_secs_f64() / plain.index.as_secs_f64(),
        sealed.query_p50.as_secs_f64() / plain.query_p50.as_secs_f64(),
        sealed.query_p95.as_secs_f64() / plain.query_p95.as_secs_f64()
    );
}
