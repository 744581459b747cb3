//! Tiny random-weight Gemma 3 models (see tvtiny).
