#!/usr/bin/env bash
# Fails when the top-level modules of src/ import each other in a circle (ARCHITECTURE.md, "Code
# map": the modules form layers, each one uses only the ones below it).
#
# Reads every `crate::…` path in src/ (`use` lines, grouped `use crate::{a::X, b::Y}` and inline
# `crate::x::f()` paths) plus `super::` chains that climb out of a top-level module, turns them
# into edges "module → module it uses", and lists each strongly connected component of more than
# one module with the lines that make its edges. Comments and string literals are skipped.
#   scripts/check-imports.sh          check; exit 1 listing each cycle
#   scripts/check-imports.sh --graph  print the edges (module -> module: count) and check
set -euo pipefail
cd "$(dirname "$0")/.."

exec perl -e '
use strict; use warnings;
my $show_graph = grep { $_ eq "--graph" } @ARGV;
my @files = split /\n/, `find src -name "*.rs" | sort`;
my %top;   # top-level module names
for my $f (@files) { $top{$1} = 1 if $f =~ m{^src/([a-z_0-9]+)(?:\.rs|/)} && $1 ne "lib" && $1 ne "main"; }
my (%edges, %where);
for my $f (@files) {
    next unless $f =~ m{^src/([a-z_0-9]+)(?:\.rs|/)};
    my $from = $1;
    next unless $top{$from};
    # Module depth of the file: src/a.rs and src/a/mod.rs are 1, src/a/b.rs is 2, ...
    (my $rel = $f) =~ s{^src/}{};
    $rel =~ s{(/mod)?\.rs$}{};
    my $depth = scalar(split m{/}, $rel);
    open my $fh, "<", $f or die "$f: $!";
    my $text = do { local $/; <$fh> };
    close $fh;
    # Blank out comments and string literals, keeping newlines so line numbers stay right.
    $text =~ s{//[^\n]*|/\*.*?\*/|r#*"(?:.*?)"#*|"(?:\\.|[^"\\])*"}{ (my $m = $&) =~ s/[^\n]/ /g; $m }gse;
    my @targets;   # [module, offset]
    while ($text =~ m{\b((?:super::)+)([a-z_0-9]+)}g) {
        my $ups = length($1) / 7;
        push @targets, [$2, pos($text)] if $ups == $depth;
    }
    while ($text =~ m{\bcrate::(\{|[a-z_0-9]+)}g) {
        my $start = pos($text);
        if ($1 ne "{") { push @targets, [$1, $start]; next; }
        # A group: the first segment of each top-level item of the braces.
        my ($level, $item_start, $i) = (1, 1, $start);
        while ($level > 0 && $i < length $text) {
            my $c = substr($text, $i, 1);
            if ($item_start && $c =~ /[a-z_]/) {
                substr($text, $i) =~ /^([a-z_0-9]+)/;
                push @targets, [$1, $i];
                $item_start = 0;
            }
            $level++ if $c eq "{";
            $level-- if $c eq "}";
            $item_start = 1 if $c eq "," && $level == 1;
            $i++;
        }
    }
    for my $t (@targets) {
        my ($to, $off) = @$t;
        next unless $top{$to} && $to ne $from;
        my $line = 1 + (substr($text, 0, $off) =~ tr/\n//);
        $edges{$from}{$to}++;
        push @{ $where{"$from $to"} }, "$f:$line";
    }
}
if ($show_graph) {
    for my $from (sort keys %edges) {
        print "$from -> $_: $edges{$from}{$_}\n" for sort keys %{ $edges{$from} };
    }
}
# Tarjan strongly connected components.
my ($index, @stack, %idx, %low, %on, @sccs) = (0);
my $visit; $visit = sub {
    my $v = shift;
    $idx{$v} = $low{$v} = $index++;
    push @stack, $v; $on{$v} = 1;
    for my $w (sort keys %{ $edges{$v} || {} }) {
        if (!exists $idx{$w}) { $visit->($w); $low{$v} = $low{$w} if $low{$w} < $low{$v}; }
        elsif ($on{$w}) { $low{$v} = $idx{$w} if $idx{$w} < $low{$v}; }
    }
    if ($low{$v} == $idx{$v}) {
        my @c; my $w;
        do { $w = pop @stack; $on{$w} = 0; push @c, $w } while ($w ne $v);
        push @sccs, [sort @c] if @c > 1;
    }
};
$visit->($_) for grep { !exists $idx{$_} } sort keys %top;
exit 0 unless @sccs;
for my $c (@sccs) {
    my %in = map { $_ => 1 } @$c;
    print STDERR "import cycle between top-level modules: ", join(", ", @$c), "\n";
    for my $from (@$c) {
        for my $to (sort grep { $in{$_} } keys %{ $edges{$from} }) {
            my @w = @{ $where{"$from $to"} };
            my $more = @w > 3 ? sprintf(" (+%d more)", @w - 3) : "";
            print STDERR "  $from -> $to: ", join(" ", @w[0 .. ($#w < 2 ? $#w : 2)]), "$more\n";
        }
    }
}
exit 1;
' -- "$@"
