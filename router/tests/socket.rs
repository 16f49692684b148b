//! Over a real TCP socket: a client that closes its connection mid-stream gets its
//! sequence cancelled on the shard (hyper drops the SSE body, the guard sends Cancel).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, Options, config, eventually, script_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn closing_the_socket_mid_stream_cancels() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let mut cfg = config(script_of(&tokenizer, " one two three four five"));
    cfg.cycle = true;
    cfg.step = Duration::from_millis(20);
    let Some(h) = Harness::start(vec![cfg], Options::default()).await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = pagedserve_router::router(Arc::clone(&h.state));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let body = r#"{"prompt":"Count:","max_tokens":200,"stream":true}"#;
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request.as_bytes()).await.expect("send");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("data: {") {
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
        let n = read
            .unwrap_or_else(|_| panic!("no data: {:?}", String::from_utf8_lossy(&received)))
            .expect("read");
        assert!(n > 0, "stream ended early");
        received.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&received).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"));
    let shard = &h.shards[0];
    let id = shard.submits()[0][0].id;
    assert!(shard.cancelled_ids().is_empty());
    drop(socket);
    assert!(
        eventually(|| shard.cancelled_ids() == vec![id]).await,
        "Cancel after close"
    );
}
