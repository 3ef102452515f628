//! Shell completions, generated from the same clap definitions as `--help`.

use std::process::Command;

use crate::harness::*;

#[test]
fn bash_loads_the_completion_and_it_completes_flags_and_subcommands() {
    let script = format!(
        r#"source <("{SUP}" completions bash) && complete -p sup &&
           COMP_WORDS=(sup --max-su) COMP_CWORD=1 && _sup sup --max-su sup && echo "${{COMPREPLY[@]}}" &&
           COMP_WORDS=(sup ct) COMP_CWORD=1 && _sup sup ct sup && echo "${{COMPREPLY[@]}}""#
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("-F _sup sup"), "{stdout}");
    assert_eq!(lines[1], "--max-surge", "{stdout}");
    assert_eq!(lines[2], "ctl", "{stdout}");
}

#[test]
fn zsh_and_fish_scripts_name_sup_and_an_unknown_shell_is_a_usage_error() {
    let run = |shell: &str| Command::new(SUP).args(["completions", shell]).output().unwrap();
    let zsh = run("zsh");
    assert!(zsh.status.success());
    assert!(String::from_utf8_lossy(&zsh.stdout).starts_with("#compdef sup"));
    let fish = String::from_utf8_lossy(&run("fish").stdout).into_owned();
    assert!(fish.contains("complete -c sup") && fish.contains("max-surge"), "{fish}");
    let bad = run("tcsh");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("sup: error: invalid value 'tcsh'"));
}
