//! SSE framing as Latchkey reads it: MCP responses scanned for JSON messages
//! (`latchkey_mcp::sse_messages`) and event streams read as they arrive (the CLI's
//! `/v1/events` and `stdio` relays).
//!
//! The first byte seeds where the body is cut into chunks; the events read from the
//! chunks must be exactly those read from the whole body, so no event is lost, merged
//! or split at a chunk boundary.
#![no_main]
use bytes::Bytes;
use futures_util::StreamExt as _;
use libfuzzer_sys::fuzz_target;

type Event = (Option<String>, Option<String>, Option<String>);

fn events(chunks: Vec<Bytes>) -> Vec<Result<Event, ()>> {
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let mut sse = sse_stream::SseStream::from_bytes_stream(stream);
    futures_executor::block_on(async {
        let mut out = Vec::new();
        while let Some(item) = sse.next().await {
            match item {
                Ok(ev) => out.push(Ok((ev.event, ev.data, ev.id))),
                Err(_) => {
                    out.push(Err(()));
                    break;
                }
            }
        }
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let whole = Bytes::copy_from_slice(body);
    let messages = futures_executor::block_on(latchkey_mcp::sse_messages(whole.clone()));
    assert!(messages.len() <= body.len());

    // Cut points from a small generator seeded by the first byte (1..=16 bytes apart).
    let mut chunks = Vec::new();
    let mut state = u32::from(seed) | 1;
    let mut at = 0;
    while at < body.len() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = ((state >> 16) % 16 + 1) as usize;
        let end = (at + len).min(body.len());
        chunks.push(whole.slice(at..end));
        at = end;
    }
    assert_eq!(events(vec![whole]), events(chunks));
});
