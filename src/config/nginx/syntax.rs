//! nginx's configuration syntax, sans-io: text to a tree of directives,
//! and the small readings of it every conversion step uses.

/// One directive: its name, arguments, and block if it has one.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Directive {
    pub(super) name: String,
    pub(super) args: Vec<String>,
    pub(super) block: Option<Vec<Directive>>,
    /// Where it is: the file (once its includer marks it) and the line.
    pub(super) file: Option<std::rc::Rc<str>>,
    pub(super) line: usize,
}

impl Directive {
    /// `file:line` (or `line N` for text without a file).
    pub(super) fn place(&self) -> String {
        match &self.file {
            Some(f) => format!("{f}:{}", self.line),
            None => format!("line {}", self.line),
        }
    }
}

/// Mark every directive of `tree` as read from `file`.
pub(super) fn mark(tree: &mut [Directive], file: &std::rc::Rc<str>) {
    for d in tree {
        d.file = Some(file.clone());
        if let Some(b) = d.block.as_mut() {
            mark(b, file);
        }
    }
}

/// The directives of one file's text.
pub(super) fn parse(text: &str) -> Result<Vec<Directive>, String> {
    let tokens = tokenize(text)?;
    let mut at = 0;
    parse_block(&tokens, &mut at, false)
}

pub(super) fn has(server: &Directive, name: &str) -> bool {
    let mut inner = Vec::new();
    flatten(
        server.block.as_ref().map_or(&[][..], Vec::as_slice),
        &mut inner,
    );
    inner.iter().any(|d| d.name == name)
}

pub(super) fn has_return_https(server: &Directive) -> bool {
    let mut inner = Vec::new();
    flatten(
        server.block.as_ref().map_or(&[][..], Vec::as_slice),
        &mut inner,
    );
    inner
        .iter()
        .any(|d| d.name == "return" && d.args.iter().any(|a| a.starts_with("https://")))
}

/// `443` -> `0.0.0.0:443`; `[::]:443` and `127.0.0.1:8443` as they are.
pub(super) fn listen_addr(l: &str) -> String {
    if l.chars().all(|c| c.is_ascii_digit()) {
        format!("0.0.0.0:{l}")
    } else {
        l.to_string()
    }
}

/// `2r/s` -> 2.0, `30r/m` -> 0.5.
pub(super) fn rate(r: &str) -> Option<f64> {
    let (n, unit) = r.split_once("r/")?;
    let n: f64 = n.parse().ok()?;
    match unit {
        "s" => Some(n),
        "m" => Some(n / 60.0),
        _ => None,
    }
}

/// nginx times: `60`, `60s`, `5m`, `1h`, in seconds.
pub(super) fn seconds(t: &str) -> Option<u64> {
    let (n, mul) = match t.char_indices().last()? {
        (i, 's') => (&t[..i], 1),
        (i, 'm') => (&t[..i], 60),
        (i, 'h') => (&t[..i], 3600),
        _ => (t, 1),
    };
    n.parse::<u64>().ok().map(|n| n * mul)
}

pub(super) fn arg_value<'a>(args: &'a [String], prefix: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(prefix))
}

pub(super) fn flatten<'a>(block: &'a [Directive], out: &mut Vec<&'a Directive>) {
    for d in block {
        out.push(d);
        if let Some(b) = &d.block {
            flatten(b, out);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
    /// A word, and the line it is on.
    Word(String, usize),
    Open,
    Close,
    End,
}

pub(super) fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '#' => {
                while chars.next().is_some_and(|c| c != '\n') {}
                line += 1;
            }
            '{' | '}' | ';' => {
                chars.next();
                out.push(match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    _ => Token::End,
                });
            }
            '"' | '\'' => {
                chars.next();
                let mut w = String::new();
                let at = line;
                loop {
                    match chars.next() {
                        Some('\\') => w.extend(chars.next()),
                        Some(q) if q == c => break,
                        Some(ch) => {
                            line += usize::from(ch == '\n');
                            w.push(ch)
                        }
                        None => return Err("a quoted string is not closed".into()),
                    }
                }
                out.push(Token::Word(w, at));
            }
            c if c.is_whitespace() => {
                line += usize::from(c == '\n');
                chars.next();
            }
            _ => {
                let mut w = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || matches!(ch, '{' | '}' | ';' | '"' | '\'') {
                        break;
                    }
                    w.push(ch);
                    chars.next();
                }
                out.push(Token::Word(w, line));
            }
        }
    }
    Ok(out)
}

pub(super) fn parse_block(
    tokens: &[Token],
    at: &mut usize,
    nested: bool,
) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut first_line = 0;
    while *at < tokens.len() {
        let t = &tokens[*at];
        *at += 1;
        match t {
            // The documentation's placeholder for "the rest of your block".
            Token::Word(w, _) if w == "(...)" => {}
            Token::Word(w, line) => {
                if words.is_empty() {
                    first_line = *line;
                }
                words.push(w.clone())
            }
            Token::End | Token::Open => {
                if words.is_empty() {
                    return Err("a `;` or `{` without a directive".into());
                }
                let name = words.remove(0);
                let block = match t {
                    Token::Open => Some(parse_block(tokens, at, true)?),
                    _ => None,
                };
                out.push(Directive {
                    name,
                    args: std::mem::take(&mut words),
                    block,
                    file: None,
                    line: first_line,
                });
            }
            Token::Close if nested => {
                if !words.is_empty() {
                    return Err(format!("`{}` is not ended by `;`", words.join(" ")));
                }
                return Ok(out);
            }
            Token::Close => return Err("a `}` without its `{`".into()),
        }
    }
    if nested {
        return Err("a `{` is not closed".into());
    }
    if !words.is_empty() {
        return Err(format!("`{}` is not ended by `;`", words.join(" ")));
    }
    Ok(out)
}
