//! The engine thread's loop: block on commands when idle, otherwise drain them between steps.

use super::Command;
use super::runner::Engine;
use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, TryRecvError};

/// Runs until `Shutdown` or until every command sender is gone.
pub(crate) fn run(mut engine: Engine, commands: Receiver<Command>) {
    loop {
        if !engine.has_work() {
            // Idle: sleep in the channel, no busy loop.
            let Ok(command) = commands.recv() else {
                return;
            };
            if engine.handle(command).is_break() {
                return;
            }
        }
        loop {
            match commands.try_recv() {
                Ok(command) => {
                    if let ControlFlow::Break(()) = engine.handle(command) {
                        return;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        engine.step();
    }
}
