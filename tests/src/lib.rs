//! Integration tests that boot tensorvisor images in emulators and judge what they print.
