//! Container logs in the CRI format, as containerd writes them:
//! `<RFC3339Nano time> <stdout|stderr> <P|F> <message>` per physical line, where `P` marks a
//! partial line (containerd splits long lines) that continues in the next record of the same
//! stream and `F` ends one. The reader turns that back into the program's own lines, interleaving
//! stdout and stderr in the order they were written, as `kubectl logs` shows them.
//!
//! Tails are read from the end of the file in growing windows, so that `--tail 10` of a large
//! log reads a few KiB, not the whole file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// One physical line of a CRI log.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    stream: &'a [u8],
    partial: bool,
    message: &'a [u8],
}

/// Parses one physical line (without its newline). A line without a `P`/`F` tag (the format
/// before tags existed) is taken as a full line; a line that is not a log record at all (no
/// stream) is kept whole, so that nothing the file holds is hidden.
fn parse(line: &[u8]) -> Record<'_> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let (_time, stream) = match (fields.next(), fields.next()) {
        (Some(t), Some(s)) if s == b"stdout" || s == b"stderr" => (t, s),
        _ => {
            return Record {
                stream: b"",
                partial: false,
                message: line,
            }
        }
    };
    let tag = fields.next().unwrap_or(b"");
    let rest = fields.next().unwrap_or(b"");
    // Tags are `:`-separated; the first says partial or full.
    let first_tag = tag.split(|b| *b == b':').next().unwrap_or(b"");
    match first_tag {
        b"P" => Record {
            stream,
            partial: true,
            message: rest,
        },
        b"F" => Record {
            stream,
            partial: false,
            message: rest,
        },
        _ => {
            // Untagged: everything after the stream is the message.
            let prefix = line.len() - tag.len() - usize::from(!rest.is_empty()) - rest.len();
            Record {
                stream,
                partial: false,
                message: &line[prefix..],
            }
        }
    }
}

/// Rebuilds the program's lines from physical lines. With `drop_first_per_stream`, the first
/// line of each stream is dropped: the text starts mid-file, so that line may miss its start.
fn assemble(text: &[u8], drop_first_per_stream: bool) -> Vec<Vec<u8>> {
    // Per stream: the partial line being assembled, and whether its first line was seen.
    struct Stream<'a> {
        name: &'a [u8],
        pending: Option<Vec<u8>>,
        seen: bool,
    }
    let mut streams: Vec<Stream<'_>> = Vec::new();
    // Finished lines, in the order their last part was written; a slot may be reserved for a
    // line still pending (so that the order holds when it completes).
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let record = parse(line);
        let index = match streams.iter().position(|s| s.name == record.stream) {
            Some(i) => i,
            None => {
                streams.push(Stream {
                    name: record.stream,
                    pending: None,
                    seen: false,
                });
                streams.len() - 1
            }
        };
        let stream = &mut streams[index];
        let buf = stream.pending.get_or_insert_with(Vec::new);
        buf.extend_from_slice(record.message);
        if record.partial {
            continue;
        }
        let done = stream.pending.take().unwrap_or_default();
        let first = !stream.seen;
        stream.seen = true;
        if first && drop_first_per_stream {
            continue;
        }
        out.push(done);
    }
    // Lines still being written: shown as they are.
    for stream in streams {
        if let Some(pending) = stream.pending {
            if stream.seen || !drop_first_per_stream {
                out.push(pending);
            }
        }
    }
    out
}

fn render(lines: &[Vec<u8>]) -> String {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The program's output in a CRI log file: the last `tail` lines (all if `None`), each ending
/// in a newline.
pub fn read_tail(path: &Path, tail: Option<usize>) -> io::Result<String> {
    let mut file = File::open(path)?;
    let Some(n) = tail else {
        let mut all = Vec::new();
        file.read_to_end(&mut all)?;
        return Ok(render(&assemble(&all, false)));
    };
    if n == 0 {
        return Ok(String::new());
    }
    let len = file.metadata()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        file.by_ref().take(len - start).read_to_end(&mut buf)?;
        let text: &[u8] = if start == 0 {
            &buf
        } else {
            // The first physical line is cut: skip it.
            match buf.iter().position(|b| *b == b'\n') {
                Some(i) => &buf[i + 1..],
                None => &[],
            }
        };
        let lines = assemble(text, start > 0);
        if lines.len() >= n || start == 0 {
            return Ok(render(&lines[lines.len().saturating_sub(n)..]));
        }
        window = window.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-11-25T19:04:53.123456789Z";

    #[test]
    fn records_parse_tags_and_legacy_lines() {
        let line = format!("{T} stdout F hello world");
        assert_eq!(
            parse(line.as_bytes()),
            Record {
                stream: b"stdout",
                partial: false,
                message: b"hello world"
            }
        );
        let line = format!("{T} stderr P part");
        assert!(parse(line.as_bytes()).partial);
        // An empty line is written with the tag and a trailing space (or without it).
        assert_eq!(parse(format!("{T} stdout F ").as_bytes()).message, b"");
        assert_eq!(parse(format!("{T} stdout F").as_bytes()).message, b"");
        // Several tags.
        assert!(parse(format!("{T} stdout P:x msg").as_bytes()).partial);
        // Before tags: the rest is the message.
        assert_eq!(
            parse(format!("{T} stdout legacy message").as_bytes()).message,
            b"legacy message"
        );
        assert_eq!(parse(b"garbage").message, b"garbage");
    }

    #[test]
    fn partial_lines_join_per_stream() {
        let text = format!(
            "{T} stdout P hel\n{T} stderr F err1\n{T} stdout P lo \n{T} stdout F world\n\
             {T} stderr P unfinished\n"
        );
        let lines = assemble(text.as_bytes(), false);
        assert_eq!(render(&lines), "err1\nhello world\nunfinished\n");
    }

    #[test]
    fn tails_count_program_lines_across_windows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut text = String::new();
        for i in 0..50_000 {
            // Every line split in two records, with stderr lines in between.
            text.push_str(&format!("{T} stdout P line \n{T} stdout F {i}\n"));
            if i % 1000 == 0 {
                text.push_str(&format!("{T} stderr F err {i}\n"));
            }
        }
        std::fs::write(&path, &text).expect("write");
        assert_eq!(
            read_tail(&path, Some(3)).expect("tail"),
            "line 49997\nline 49998\nline 49999\n"
        );
        assert_eq!(read_tail(&path, Some(0)).expect("tail"), "");
        let all = read_tail(&path, None).expect("all");
        assert_eq!(all.lines().count(), 50_000 + 50);
        assert!(all.starts_with("line 0\nerr 0\nline 1\n"), "{}", &all[..40]);
        // More lines than the file has: all of them, from the start.
        let short = dir.path().join("1.log");
        std::fs::write(&short, format!("{T} stdout F a\n{T} stdout F b\n")).expect("write");
        assert_eq!(read_tail(&short, Some(10)).expect("tail"), "a\nb\n");
        // A window that starts mid-line never shows half a line: the tail spans windows.
        let long = dir.path().join("2.log");
        let big = "x".repeat(100_000);
        std::fs::write(&long, format!("{T} stdout F {big}\n{T} stdout F end\n")).expect("write");
        assert_eq!(
            read_tail(&long, Some(2)).expect("tail"),
            format!("{big}\nend\n")
        );
    }
}
