mod aliases;
mod cli;
mod events;
mod hardening;
mod support;
mod watcher;
