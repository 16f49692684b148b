//! Frames between a tensor-parallel leader (rank 0) and its followers over one TCP stream
//! each: `tag: u32, len: u32, payload` little-endian. A follower says `Hello` once; the leader
//! answers `Init` (the NCCL unique id) and then sends one `Step` per model step: the step's
//! shape, whether it replays a CUDA graph, and the metadata words every rank uploads.

use std::io::{self, Read, Write};

use super::super::model::StepShape;

const HELLO: u32 = 0x5450_0001;
const INIT: u32 = 0x5450_0002;
const STEP: u32 = 0x5450_0003;
/// Largest payload accepted: well above any step's metadata (a few MB at most).
const MAX_PAYLOAD: usize = 256 << 20;
pub const NCCL_ID_BYTES: usize = 128;

/// What went wrong on a leader/follower link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("tensor-parallel link: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("tensor-parallel link: {0}")]
    Protocol(String),
}

pub fn io_err(what: &'static str) -> impl Fn(io::Error) -> LinkError {
    move |source| LinkError::Io { what, source }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello { rank: u32, size: u32 },
    Init { nccl_id: [u8; NCCL_ID_BYTES] },
    Step(StepFrame),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFrame {
    pub shape: StepShape,
    pub graph: bool,
    pub meta: Vec<u32>,
}

fn words(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Frame {
    fn encode(&self) -> (u32, Vec<u8>) {
        match self {
            Frame::Hello { rank, size } => (HELLO, words(&[*rank, *size])),
            Frame::Init { nccl_id } => (INIT, nccl_id.to_vec()),
            Frame::Step(s) => {
                let sh = s.shape;
                let head = [
                    sh.rows,
                    sh.decode_seqs,
                    sh.prefill_seqs,
                    sh.num_tiles,
                    sh.tile_rows,
                    sh.logit_rows,
                    usize::from(sh.sample),
                    usize::from(s.graph),
                ]
                .map(|v| v as u32);
                let mut out = words(&head);
                out.extend(words(&s.meta));
                (STEP, out)
            }
        }
    }

    fn decode(tag: u32, payload: &[u8]) -> Result<Self, LinkError> {
        let bad =
            |what: &str| LinkError::Protocol(format!("bad {what} frame ({} bytes)", payload.len()));
        match tag {
            HELLO => match u32s(payload)[..] {
                [rank, size] if payload.len() == 8 => Ok(Frame::Hello { rank, size }),
                _ => Err(bad("hello")),
            },
            INIT => Ok(Frame::Init {
                nccl_id: payload.try_into().map_err(|_| bad("init"))?,
            }),
            STEP => {
                if payload.len() < 32 || !payload.len().is_multiple_of(4) {
                    return Err(bad("step"));
                }
                let w = u32s(payload);
                let u = |i: usize| w[i] as usize;
                Ok(Frame::Step(StepFrame {
                    shape: StepShape {
                        rows: u(0),
                        decode_seqs: u(1),
                        prefill_seqs: u(2),
                        num_tiles: u(3),
                        tile_rows: u(4),
                        logit_rows: u(5),
                        sample: w[6] != 0,
                    },
                    graph: w[7] != 0,
                    meta: w[8..].to_vec(),
                }))
            }
            t => Err(LinkError::Protocol(format!("unknown frame tag {t:#x}"))),
        }
    }
}

/// Writes one frame (one `write_all`, so a step costs one syscall).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), LinkError> {
    let (tag, payload) = frame.encode();
    let mut buf = Vec::with_capacity(8 + payload.len());
    buf.extend(tag.to_le_bytes());
    buf.extend((payload.len() as u32).to_le_bytes());
    buf.extend(payload);
    w.write_all(&buf).map_err(io_err("send frame"))
}

/// Reads one frame; `None` when the peer closed the stream cleanly between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, LinkError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io_err("read frame header")(e)),
    }
    let tag = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(LinkError::Protocol(format!("frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(io_err("read frame"))?;
    Frame::decode(tag, &payload).map(Some)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    fn step() -> Frame {
        Frame::Step(StepFrame {
            shape: StepShape {
                rows: 5,
                decode_seqs: 2,
                prefill_seqs: 1,
                num_tiles: 3,
                tile_rows: 64,
                logit_rows: 3,
                sample: true,
            },
            graph: false,
            meta: vec![1, u32::MAX, 7],
        })
    }

    #[test]
    fn frames_round_trip_over_a_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = vec![
            Frame::Hello { rank: 1, size: 2 },
            Frame::Init {
                nccl_id: [9; NCCL_ID_BYTES],
            },
            step(),
        ];
        let to_send = sent.clone();
        let writer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            for f in &to_send {
                write_frame(&mut s, f).unwrap();
            }
        });
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut s).unwrap() {
            got.push(f);
        }
        writer.join().unwrap();
        assert_eq!(got, sent, "a clean close ends the stream with None");
    }

    #[test]
    fn refuses_garbage() {
        let mut bad: &[u8] = &[1, 0, 0, 0, 0, 0, 0, 0];
        assert!(read_frame(&mut bad).is_err(), "unknown tag");
        let mut huge: &[u8] = &[3, 0, 0x50, 0x54, 0xff, 0xff, 0xff, 0x7f];
        assert!(read_frame(&mut huge).is_err(), "oversized frame");
        let mut cut = Vec::new();
        write_frame(&mut cut, &step()).unwrap();
        cut.truncate(cut.len() - 2);
        assert!(read_frame(&mut &cut[..]).is_err(), "truncated payload");
    }
}
