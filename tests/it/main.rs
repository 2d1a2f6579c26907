mod aliases;
mod cli;
mod events;
mod hardening;
mod journal_tamper;
mod proxy;
mod support;
mod watcher;
