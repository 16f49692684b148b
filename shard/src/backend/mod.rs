//! Compute backends. Filled by the model/backend work.
