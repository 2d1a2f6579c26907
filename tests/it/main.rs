mod aliases;
mod cli;
mod hardening;
mod support;
mod watcher;
